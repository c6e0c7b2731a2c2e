"""Cache → batches: one split of a feature cache as shuffled float32 batches [B, n, c, h, w] + targets.

A split is loaded into RAM (kept fp16, converted per batch) when it fits under the RAM limit — by default
half the available memory, or `STECACHE_RAM_LIMIT` (bytes, or with a K/M/G suffix) — otherwise it is
streamed: shards in shuffled order, rows shuffled within a buffer of a few shards, each buffer read in
row order so reads stay sequential inside shards. Which mode was chosen is logged. The epoch's row list
(a permutation, or a class-balanced weighted draw) depends only on (seed, epoch), and its shard-aware
reshuffle only on the seed and the cache's shard size — never on the mode or the RAM limit — so a run gives
the same batches in RAM or streamed, resumed (in either mode) or distributed. A background thread prepares
the next batches, as many ahead as the measured shard-read and step times need (`prefetch`, `read_ahead`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CacheIncomplete, EmptySplit, StecacheError

log = logging.getLogger(__name__)

BUFFER_SHARDS = 4  # shards shuffled together when streaming (fewer if the RAM limit is smaller)
ORDER_SHARDS = 4  # shards whose rows one training order shuffles together, in RAM and streamed alike
LOAD_ROWS = 256  # rows read per call when loading into RAM


def ram_limit(limit: int | str | None = None, flag: str = "--ram-limit") -> int:
    """Bytes a split may take in RAM: `limit` (given as `flag`), else $STECACHE_RAM_LIMIT, else half of
    MemAvailable."""
    source = flag
    if limit is None:
        limit, source = os.environ.get("STECACHE_RAM_LIMIT"), "STECACHE_RAM_LIMIT"
    if limit is None:
        return _mem_available() // 2
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(limit).lower())
    if not m:
        raise StecacheError(f"{source} {limit!r} is not a size like 2G, 512M or 1000000")
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
    """Regroup positions for training: shuffled shard order, rows shuffled within groups of ORDER_SHARDS
    shards (independent of the mode and the RAM limit: results are a function of the command)."""
    shard = data.rows[order] // data.shard_rows
    k = ORDER_SHARDS
    shards = rng.permutation(np.unique(shard))
    groups = []
    for i in range(0, len(shards), k):
        g = order[np.isin(shard, shards[i : i + k])]
        groups.append(rng.permutation(g))
    return groups


def _segments(data: SplitData, order: np.ndarray, batch_size: int, seed: int | None) -> Iterator[tuple]:
    """(positions, features [p, V, n, c, h, w] or None in RAM) pieces, in the same order in both modes;
    streamed: one sorted read per buffer of shards."""
    step = data.buffer_shards * data.shard_rows  # rows a streamed read may hold
    if seed is None:  # keep `order` (evaluation)
        groups = [order]
    else:
        groups = shard_order(data, order, np.random.default_rng([seed, 3, len(order)]))
    for group in groups:
        for i in range(0, len(group), batch_size if data.in_ram else step):
            piece = group[i : i + (batch_size if data.in_ram else step)]
            if data.in_ram:
                yield piece, None
            else:
                uniq, inv = np.unique(piece, return_inverse=True)
                yield piece, data.read(uniq)[inv]


def batches(
    data: SplitData,
    order: np.ndarray,
    batch_size: int,
    view_of: np.ndarray | None = None,
    seed: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions [b], features [b, V', n, c, h, w]); V' = 1 if view_of.

    In `order` when seed is None; with a seed, a shard-aware reshuffle of `order` (the same in RAM and
    streamed).
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


READ_AHEAD_BYTES = 256 * 2**20  # most bytes of batches held ahead by `prefetch`


def read_ahead(read_seconds: float, step_seconds: float, item_bytes: int, lo: int = 2,
               max_bytes: int = READ_AHEAD_BYTES) -> int:  # fmt: skip
    """Batches to hold ahead so a read of `read_seconds` (the slowest item, e.g. a streamed buffer of
    shards) hides behind the steps of the queued batches: ceil(read / step) + 1, at least `lo`, at most
    what fits in `max_bytes`; before any step is measured (an iterator made ahead of its epoch), as many
    as fit."""
    cap = max_bytes // max(1, item_bytes)
    need = cap if step_seconds <= 0 else max(lo, int(np.ceil(read_seconds / step_seconds)) + 1)
    return int(max(lo, min(need, cap)))


def prefetch(it: Iterator, depth: int | None = None) -> Iterator:
    """Run iterator `it` in a background thread, ahead of the consumer; exceptions re-raise here.

    depth None (default): read-ahead sized while running from the measured step time (consumer time
    between batches) and read time (the slowest item of the producer: a streamed buffer of shards), see
    `read_ahead`; an int fixes it. The items and their order are exactly `it`'s. Reading starts at the
    call, so an iterator made before it is needed (the next epoch's, during validation) is ready in time.
    """
    items: list = []
    cond = threading.Condition()
    stop = threading.Event()
    end = object()
    stats = {"read": 0.0, "step": 0.0, "bytes": 1, "limit": depth or 2}

    def put(item) -> bool:
        with cond:
            while len(items) >= stats["limit"] and not stop.is_set():
                cond.wait(0.1)
            if stop.is_set():
                return False
            items.append(item)
            cond.notify_all()
            return True

    def work():
        try:
            t = time.perf_counter()
            for item in it:
                read = time.perf_counter() - t
                if depth is None:
                    stats["read"] = max(stats["read"], read)
                    stats["bytes"] = max(stats["bytes"], _nbytes(item))
                    stats["limit"] = read_ahead(stats["read"], stats["step"], stats["bytes"])
                if not put(item):
                    return
                t = time.perf_counter()
            put(end)
        except BaseException as e:  # noqa: B036 — handed to the consumer, which re-raises it
            put(e)

    threading.Thread(target=work, daemon=True).start()
    gen = _drain(items, cond, stop, end, stats, depth)
    weakref.finalize(gen, stop.set)  # an iterator dropped unread stops its thread
    return gen


def _drain(items: list, cond, stop, end, stats: dict, depth: int | None) -> Iterator:
    """The consumer side of `prefetch`: hand out items in order, measure the step time between them."""
    try:
        while True:
            with cond:
                while not items:
                    cond.wait(0.1)
                item = items.pop(0)
                cond.notify_all()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            got = time.perf_counter()
            yield item
            if depth is None:  # the consumer's step: from handing the item out to asking for the next
                step = time.perf_counter() - got
                stats["step"] = step if not stats["step"] else 0.8 * stats["step"] + 0.2 * step
                stats["limit"] = read_ahead(stats["read"], stats["step"], stats["bytes"])
    finally:
        stop.set()
        with cond:
            cond.notify_all()


def _nbytes(item) -> int:
    parts = item if isinstance(item, tuple) else (item,)
    return sum(getattr(x, "nbytes", 0) for x in parts)


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
