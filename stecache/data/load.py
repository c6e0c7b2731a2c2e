"""A split of a feature cache, in RAM or streamed: which rows, their labels, and how to read them.

A split is loaded into RAM (kept fp16, converted per batch) when it fits under the RAM limit — by default
half the available memory, or `STECACHE_RAM_LIMIT` (bytes, or with a K/M/G suffix) — otherwise it is
streamed: shards read a buffer of a few at a time (`SplitData.buffer_shards`), each read in row order so
reads stay sequential inside shards. Which mode was chosen is logged. The batch order (order.py) does not
depend on the mode. Usage: `load_split(open_cache(url), "train")` -> SplitData.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import CacheIncomplete, EmptySplit, StecacheError

log = logging.getLogger(__name__)

BUFFER_SHARDS = 4  # shards shuffled together when streaming (fewer if the RAM limit is smaller)
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
