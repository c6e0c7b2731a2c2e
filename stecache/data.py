"""Cache → batches: one split of a feature cache as shuffled float32 batches [B, n, c, h, w] + targets.

A split is loaded into RAM (kept fp16, converted per batch) when it fits under the RAM limit — by default
half the available memory, or `STECACHE_RAM_LIMIT` (bytes, or with a K/M/G suffix) — otherwise it is
streamed: shards in shuffled order, rows shuffled within a buffer of a few shards, each buffer read in
row order so reads stay sequential inside shards. Which mode was chosen is logged. The epoch's row list
(a permutation, or a class-balanced weighted draw) depends only on (seed, epoch), so a resumed or
distributed run visits the same rows in the same order. A background thread prepares the next batch.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CacheIncomplete, EmptySplit, StecacheError

log = logging.getLogger(__name__)

BUFFER_SHARDS = 4  # shards shuffled together when streaming (fewer if the RAM limit is smaller)
LOAD_ROWS = 256  # rows read per call when loading into RAM


def ram_limit(limit: int | str | None = None) -> int:
    """Bytes a split may take in RAM: `limit`, else $STECACHE_RAM_LIMIT, else half of MemAvailable."""
    limit = limit if limit is not None else os.environ.get("STECACHE_RAM_LIMIT")
    if limit is None:
        return _mem_available() // 2
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(limit).lower())
    if not m:
        raise StecacheError(
            f"RAM limit {limit!r} (STECACHE_RAM_LIMIT) is not a size like 2G, 512M or 1000000"
        )
    return int(float(m[1]) * 1024 ** "_kmgt".index(m[2] or "_"))


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (8 GiB if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def check_complete(cache) -> int:
    """Raise CacheIncomplete if rows are neither done nor failed; return the number of failed rows."""
    done = cache.done
    failed = (cache.error != "") & ~done
    pending = int((~done & ~failed).sum())
    if pending:
        raise CacheIncomplete(
            f"cache {cache.url} has {pending} of {len(done)} clips not extracted yet; "
            "let `stecache extract` finish (re-run it to resume) before training"
        )
    return int(failed.sum())


def sample_weights(labels: np.ndarray) -> np.ndarray:
    """Class-balanced sampling weight per sample from multi-hot labels [M, K] (single-label: one 1 per row).

    A sample weighs the mean of 1/count(k) over its labels k, so every class is drawn equally often when
    labels do not overlap (single-label: exactly 1/count). Samples with no label form one extra "none"
    class. Classes are counted in `labels`, i.e. the training split.
    """
    labels = np.asarray(labels, dtype=np.float64)
    counts = labels.sum(0)
    inv = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    n_labels = labels.sum(1)
    w = np.divide(labels @ inv, n_labels, out=np.zeros(len(labels)), where=n_labels > 0)
    none = n_labels == 0
    w[none] = 1.0 / none.sum() if none.any() else 0.0
    return w


def epoch_rows(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Positions 0..n-1 in this epoch's order: a permutation, or n weighted draws with replacement."""
    rng = np.random.default_rng([seed, epoch, 1])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def epoch_views(n: int, num_views: int, seed: int, epoch: int) -> np.ndarray:
    """A random view index per position for this epoch: [n] int in 0..num_views-1."""
    return np.random.default_rng([seed, epoch, 2]).integers(0, num_views, size=n)


@dataclass
class SplitData:
    """The done rows of one split: labels, and either the features in RAM or how to stream them."""

    cache: object
    split: str
    rows: np.ndarray  # [M] cache rows, ascending
    labels: np.ndarray  # [M, K] uint8 multi-hot
    views: int  # views per row served (1 = the main view only)
    features: np.ndarray | None  # [M, V, n, c, h, w] stored dtype when in RAM, else None (streaming)
    shard_rows: int  # rows per storage shard (the streaming unit)
    buffer_shards: int = BUFFER_SHARDS  # shards read and shuffled together when streaming

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def in_ram(self) -> bool:
        return self.features is not None

    def targets(self, multi_label: bool) -> np.ndarray:
        """Loss targets: float multi-hot [M, K] or class index [M]."""
        return self.labels.astype(np.float32) if multi_label else self.labels.argmax(1)

    def read(self, pos: np.ndarray) -> np.ndarray:
        """Features of positions `pos` (sorted, unique): [len(pos), V, n, c, h, w] stored dtype."""
        if self.in_ram:
            return self.features[pos]
        rows = self.rows[pos]
        if self.views == 1:
            read = lambda r: self.cache.read(r)[:, None]
        else:
            read = lambda r: self.cache.read_views(r)[:, : self.views]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 2 * len(rows):  # one sequential read of the span beats row-by-row selection
            return read(slice(lo, hi))[rows - lo]
        return read(rows)


def view_count(cache, views: str) -> int:
    """Views per clip served: "first" = the main view, "test" = the test protocol's clips x crops (not the
    augmented train views stored after them), "all" = every stored view."""
    if views == "first":
        return 1
    if views == "test":
        test = (cache.attrs.get("views") or {}).get("test")
        return int(np.prod(test)) if test else cache.num_views
    if views == "all":
        return cache.num_views
    raise ValueError(f"views must be 'first', 'test' or 'all', got {views!r}")


def load_split(cache, split: str, views: str = "first", limit: int | str | None = None) -> SplitData:
    """Split `split` of `cache`, `views` as in view_count; in RAM if it fits under `limit`, else streamed."""
    rows = np.asarray(cache.rows(split), dtype=np.int64)
    if len(rows) == 0:
        counts = {s: int((cache.split == s).sum()) for s in sorted(set(cache.split.tolist()))}
        raise EmptySplit(
            f"cache {cache.url} has no extracted clips in split {split!r} (clips per split: {counts})"
        )
    labels = np.asarray(cache.labels())[rows]
    V = view_count(cache, views)
    nbytes = len(rows) * V * int(np.prod(cache.feature_shape)) * np.dtype(cache.dtype).itemsize
    budget = ram_limit(limit)
    data = SplitData(cache, split, rows, labels, V, None, cache.shard_size)
    if nbytes <= budget:
        log.info("split %s: %d clips, %.1f MB loaded into RAM", split, len(rows), nbytes / 1e6)
        parts = [
            data.read(np.arange(i, min(i + LOAD_ROWS, len(rows)))) for i in range(0, len(rows), LOAD_ROWS)
        ]
        data.features = np.concatenate(parts)
    else:
        shard_bytes = nbytes / len(rows) * data.shard_rows
        data.buffer_shards = int(max(1, min(BUFFER_SHARDS, budget // shard_bytes)))
        log.info(
            "split %s: %d clips, %.1f MB > RAM limit %.1f MB: streaming, %d shard(s) of %d rows at a time",
            split, len(rows), nbytes / 1e6, budget / 1e6, data.buffer_shards, data.shard_rows,
        )  # fmt: skip
    return data


def shard_order(data: SplitData, order: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Regroup positions for streaming: shuffled shard order, rows shuffled within buffer_shards shards."""
    shard = data.rows[order] // data.shard_rows
    k = data.buffer_shards
    shards = rng.permutation(np.unique(shard))
    groups = []
    for i in range(0, len(shards), k):
        g = order[np.isin(shard, shards[i : i + k])]
        groups.append(rng.permutation(g))
    return groups


def _segments(data: SplitData, order: np.ndarray, batch_size: int, seed: int | None) -> Iterator[tuple]:
    """(positions, features [p, V, n, c, h, w]) pieces; streamed: one sorted read per buffer of shards."""
    if data.in_ram:
        for i in range(0, len(order), batch_size):
            yield order[i : i + batch_size], None
        return
    if seed is None:  # keep `order` (evaluation): buffers of consecutive positions
        step = data.buffer_shards * data.shard_rows
        groups = [order[i : i + step] for i in range(0, len(order), step)]
    else:
        groups = shard_order(data, order, np.random.default_rng([seed, 3, len(order)]))
    for group in groups:
        uniq, inv = np.unique(group, return_inverse=True)
        yield group, data.read(uniq)[inv]


def batches(
    data: SplitData,
    order: np.ndarray,
    batch_size: int,
    view_of: np.ndarray | None = None,
    seed: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions [b], features [b, V', n, c, h, w]); V' = 1 if view_of.

    In `order` when in RAM or when seed is None; streamed with a seed: shard-aware reshuffle of `order`.
    """
    pos_buf, feat_buf, held = [], [], 0
    for pos, f in _segments(data, order, batch_size, seed):
        if f is None:  # in RAM: gather only what is needed
            f = (
                data.features[pos]
                if view_of is None
                else data.features[pos, view_of[pos] % data.views][:, None]
            )
        elif view_of is not None:
            f = f[np.arange(len(pos)), view_of[pos] % data.views][:, None]
        start = 0
        if held:  # complete the batch begun in the previous piece
            start = min(batch_size - held, len(pos))
            pos_buf.append(pos[:start])
            feat_buf.append(f[:start])
            held += start
            if held < batch_size:
                continue
            yield np.concatenate(pos_buf), _cat(feat_buf)
            pos_buf, feat_buf, held = [], [], 0
        for i in range(start, len(pos), batch_size):  # whole batches as views, the rest carried over
            if len(pos) - i < batch_size:
                pos_buf, feat_buf, held = [pos[i:]], [f[i:]], len(pos) - i
                break
            yield pos[i : i + batch_size], f[i : i + batch_size]
    if held:
        yield np.concatenate(pos_buf), _cat(feat_buf)


def prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run iterator `it` in a background thread, `depth` items ahead; exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in it:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: B036 — handed to the consumer, which re-raises it
            put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def to_tensor(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Stored features (fp16) → float32 tensor on `device`; a host tensor that is pinned (see `pinned`)
    goes to a GPU without blocking, a GPU-resident batch (see `make_resident`) is only converted."""
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, non_blocking=True).to(torch.float32)


# ---- the GPU path: pinned host batches, or the whole split resident in device memory ------------------

RESIDENT_SHARE = 0.5  # resident="auto": a split goes to the GPU if it takes at most this share of free memory
RESIDENT_MODES = ("auto", "on", "off")


def _cat(parts: list):
    """np.concatenate, or torch.cat for resident (torch) features."""
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def pinned(it: Iterator[tuple]) -> Iterator[tuple]:
    """(positions, features) with host features as page-locked tensors (run it in the prefetch thread, so
    the main thread's copies to the GPU are asynchronous); device tensors pass through."""
    for pos, x in it:
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.ascontiguousarray(x)).pin_memory()
        yield pos, x


def make_resident(data: SplitData, device: str | torch.device, mode: str = "auto") -> bool:
    """Move an in-RAM split's features to `device` once, kept in the stored dtype (fp16): every batch is
    then gathered there and nothing crosses the bus during training. "auto": only on CUDA and when the
    features take at most RESIDENT_SHARE of the free device memory; "on": always (any device, so the path
    is testable on CPU; fails if the split is streamed); "off": never. Returns whether it is resident."""
    if mode not in RESIDENT_MODES:
        raise StecacheError(f"--resident {mode!r}: choose one of {', '.join(RESIDENT_MODES)}")
    device = torch.device(device)
    if isinstance(data.features, torch.Tensor):
        return True
    if mode == "off" or (mode == "auto" and (device.type != "cuda" or not data.in_ram)):
        return False
    if not data.in_ram:
        raise StecacheError(
            f"--resident on: split {data.split} is streamed (larger than the RAM limit), it cannot be "
            "moved to the device whole; raise STECACHE_RAM_LIMIT or use --resident auto"
        )
    nbytes = data.features.nbytes
    if mode == "auto":
        free = torch.cuda.mem_get_info(device)[0]
        if nbytes > RESIDENT_SHARE * free:
            log.info("split %s: %.1f MB stays in host RAM (> %.0f%% of %.1f MB free on %s)", data.split,
                     nbytes / 1e6, 100 * RESIDENT_SHARE, free / 1e6, device)  # fmt: skip
            return False
    data.features = torch.from_numpy(data.features).to(device)
    log.info("split %s: %.1f MB resident on %s", data.split, nbytes / 1e6, device)
    return True


def toy_cache(
    url: str,
    n_clips: int = 160,
    num_classes: int = 4,
    feature_shape: tuple[int, int, int, int] = (4, 16, 4, 4),
    multi_label: bool = False,
    num_views: int = 1,
    seed: int = 0,
    signal: float = 1.0,
    pending_shards: int = 0,
    shard_size: int | None = None,
):
    """A synthetic feature cache (no video) for tests, benchmarks and demos; returns the open Cache.

    Class k adds its own random channel signature (×`signal`) to one spatial quadrant during one temporal
    half of the clip, on top of N(0, 1) noise: local and temporal structure, separable by every head.
    Splits: 60 % train, 20 % val, 20 % test. Single-label: classes round-robin (balanced); multi-label: one
    or two labels per clip. The last `pending_shards` shards are left unwritten (an unfinished extraction).
    """
    from .cache import Row, create_cache

    rng = np.random.default_rng(seed)
    n, c, h, w = feature_shape
    signature = rng.standard_normal((num_classes, c)).astype(np.float32)  # [K, c]
    labels = []
    for i in range(n_clips):
        first = i % num_classes
        extra = {int(rng.integers(num_classes))} if multi_label and rng.random() < 0.5 else set()
        labels.append(tuple(sorted({first} | extra)))
    split = np.array(["train"] * n_clips, dtype=object)
    perm = rng.permutation(n_clips)
    split[perm[int(0.6 * n_clips) : int(0.8 * n_clips)]] = "val"
    split[perm[int(0.8 * n_clips) :]] = "test"
    clips = [Row(f"clip{i:05d}", labels[i], split[i]) for i in range(n_clips)]
    prov = {"backbone": {"name": "toy", "seed": seed, "signal": signal}, "dataset": "toy"}
    cache = create_cache(url, clips=clips, class_names=[f"class{k}" for k in range(num_classes)],
                         multi_label=multi_label, feature_shape=feature_shape, num_views=num_views,
                         provenance=prov, shard_size=shard_size)  # fmt: skip
    t_half, h_half, w_half = max(1, n // 2), max(1, h // 2), max(1, w // 2)
    for start, stop in cache.shards()[: len(cache.shards()) - pending_shards]:
        x = rng.standard_normal((stop - start, num_views, n, c, h, w)).astype(
            np.float32
        )  # [b, V, n, c, h, w]
        for b, i in enumerate(range(start, stop)):
            for k in labels[i]:
                t0 = (k % 2) * (n - t_half)
                y0, x0 = ((k // 2) % 2) * (h - h_half), ((k // 4) % 2) * (w - w_half)
                x[b, :, t0 : t0 + t_half, :, y0 : y0 + h_half, x0 : x0 + w_half] += (
                    signal * signature[k][:, None, None]
                )
        cache.write_shard(start, x[:, 0], x[:, 1:] if num_views > 1 else None, np.ones(stop - start, bool),
                          [""] * (stop - start))  # fmt: skip
    return cache
