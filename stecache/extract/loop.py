"""The extraction loop of one rank: decode, batched forwards, background writes, shard by shard.

Decoded clips are cut into views; forwards take a chosen number of views at a time (batching.py); a thread
writes each shard once every row of it is resolved (all views stored, or failed), and only then are the
shard's `done` flags set, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from ..cache import Cache
from ..progress import Progress
from .batching import BatchChooser, launch
from .decoding import Decoded, Reader


class Writer:
    """A background thread storing finished shards in order; a bounded queue keeps memory flat."""

    def __init__(self, cache: Cache, depth: int = 2, on_written=None):
        self.cache, self.error, self.on_written = cache, None, on_written
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.cache.write_shard(*item)
                    if self.on_written is not None:
                        self.on_written(item[0])  # the shard's start row
                except Exception as e:  # re-raised in the main thread by put()/close()
                    self.error = e

    def put(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def run(cache, shards, done, dataset, backbone, views, cfg, device, rank) -> tuple:
    """Decode, forward and write this rank's shards: (extracted, [(clip_id, error)], [(clip_id, partial)],
    the forward batch's provenance, where decoding ran).

    Decoded clips are cut into views; forwards take `size` views at a time (the views of one clip may be
    split across two forwards, and a forward may span two shards). A shard is written once every one of its
    rows is resolved (all views stored, or failed). While the batch size is being chosen each forward is
    timed synchronously; afterwards, on a GPU, the device output of forward k is collected only after
    forward k+1 has been queued, so the host never waits for the device in the loop (on a CPU each output
    is stored at once: holding it across the next forward only slows that forward's allocations). A clip
    with a non-finite feature (in the stored dtype) is a failure of that clip, like a decode error.
    """
    todo = [r for a, b in shards for r in range(a, b) if not done[r]]
    if not todo:
        return 0, [], [], None, None
    decoded = Decoded(Reader(dataset, todo, views, cfg.strict_decode, cfg.box_margin), device, cfg.workers)
    shard_of = {r: (a, b) for a, b in shards for r in range(a, b)}
    unresolved = {}  # shard start -> todo rows of the shard not yet stored or failed
    for r in todo:
        unresolved[shard_of[r][0]] = unresolved.get(shard_of[r][0], 0) + 1
    v_shape = (views.count, *cache.feature_shape)
    chooser = BatchChooser(device, forced=cfg.batch_size, total=len(todo) * views.count)
    # progress counts a clip when its shard is written (decode and forward run ahead: shown beside it)
    progress = Progress(len(todo), enabled=cfg.progress and rank == 0, log_every=cfg.log_every)
    n_todo = dict(unresolved)
    writer = Writer(cache, on_written=lambda a: progress.add(written=n_todo[a]))
    bufs: dict = {}  # shard start -> {"feats" [S, V, n, c, h, w], "ok", "errors", "partial"}
    left: dict = {}  # row -> views still to store
    pending: list[tuple[int, int, torch.Tensor]] = []  # (row, view, [3, T, H, W]) awaiting a forward
    inflight = None  # the last forward's (items, output future) not yet collected
    state = {"extracted": 0}
    failed: list = []
    partial: list = []

    def put(a: int, buf: dict) -> None:
        feats = buf["feats"]
        extra = feats[:, 1:] if views.count > 1 else None
        writer.put(a, feats[:, 0], extra, buf["ok"], buf["errors"], buf["partial"])

    def resolve(row: int) -> None:
        a = shard_of[row][0]
        unresolved[a] -= 1
        if not unresolved[a]:
            put(a, bufs.pop(a))

    def collect(job) -> None:
        items, ready = job
        y = ready.result()  # [B, n, c, h, w] on the host
        for (row, v, _), feats in zip(items, y, strict=True):
            a = shard_of[row][0]
            buf = bufs[a]
            buf["feats"][row - a, v] = feats
            left[row] -= 1
            if left[row]:
                continue
            progress.add(computed=1)
            bad = int((~np.isfinite(buf["feats"][row - a])).sum())  # in the stored dtype (fp16 overflows)
            if bad:  # a failure of this clip, recorded like a decode error; its row stays zeros
                buf["feats"][row - a] = 0
                what = f"{bad} of {buf['feats'][row - a].size} values NaN/inf as {buf['feats'].dtype}"
                buf["errors"][row - a] = f"NonFiniteFeatures: non-finite features, {what}"
                failed.append((dataset.clips[row].clip_id, buf["errors"][row - a]))
            else:
                buf["ok"][row - a] = True
                state["extracted"] += 1
            resolve(row)

    def step(final: bool = False) -> None:
        nonlocal inflight, pending
        while pending and (len(pending) >= chooser.size or final):
            items, pending = pending[: chooser.size], pending[chooser.size :]
            measuring = chooser.measuring  # only at the start: nothing is in flight yet
            t = time.perf_counter()  # the forward alone, host copy included; not the bookkeeping
            job = (items, launch(backbone, items, v_shape, device, cache.dtype))
            if measuring:
                job[1].result()
                chooser.record(len(items), time.perf_counter() - t)
            elif device.type != "cpu":  # the device computes this forward while the host stores the last
                job, inflight = inflight, job
            if job is not None:
                collect(job)

    try:
        for row, x, err, note in decoded:
            a, b = shard_of[row]
            if a not in bufs:  # a new shard: start from what is stored (rows done earlier stay as they are)
                bufs[a] = {
                    "feats": np.zeros((b - a, *v_shape), dtype=cache.dtype),
                    "ok": done[a:b].copy(),
                    "errors": ["" for _ in range(b - a)],
                    "partial": ["" for _ in range(b - a)],
                }
                if bufs[a]["ok"].any():
                    bufs[a]["feats"][:] = cache.read_views(slice(a, b))
            progress.add(decoded=1, computed=1 if err else 0)
            if err:
                bufs[a]["errors"][row - a] = err
                failed.append((dataset.clips[row].clip_id, err))
                resolve(row)
            else:
                bufs[a]["partial"][row - a] = note
                if note:
                    partial.append((dataset.clips[row].clip_id, note))
                left[row] = len(x)
                pending += [(row, v, x[v]) for v in range(len(x))]
            step()
            progress.refresh()
        step(final=True)
        if inflight is not None:
            collect(inflight)
            inflight = None
    except KeyboardInterrupt:  # Ctrl-C: also keep the clips of the unfinished shards already computed
        if inflight is not None:
            collect(inflight)
        for a, buf in bufs.items():
            put(a, buf)
        raise
    finally:  # also on Ctrl-C or errors: shards already complete are still stored
        try:
            writer.close()
        finally:
            progress.close()
    batch, decode = chooser.provenance(device), decoded.provenance()
    if rank == 0:  # noted in the cache's (unfingerprinted) `extraction` attribute
        cache.group.attrs["extraction"] = {**batch, "decode": decode}
    return state["extracted"], failed, partial, batch, decode
