"""Row reads of a cache array: zarr for compressed or remote stores, straight from the shard files otherwise.

zarr 3.1's orthogonal selection on sharded arrays is ~8x slower than row-by-row reads, and those are ~10x
slower than reading raw chunks at the offsets the shard index gives, so uncompressed local caches (the
default) are read without zarr. bench/bench_cache.py measures the three.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr


def take(
    arr: zarr.Array, rows: Sequence[int] | np.ndarray | slice, raw: Path | None = None, crc=None, sums=None
) -> np.ndarray:
    """arr[rows] along axis 0: one slice read for consecutive rows, else per-row reads (raw: from files).

    With `crc` (a bytes -> int hash) and `sums` ([len(rows)] int64), raw reads also hash each row's bytes
    as they arrive, while they are still in cache (rows without a stored chunk hash as zeros, as they read).
    """
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(arr.shape[0]))
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
    if idx.min() < 0 or idx.max() >= arr.shape[0]:
        raise IndexError(f"rows out of range 0..{arr.shape[0] - 1}")
    if raw is not None:
        return read_raw(raw, arr, idx, crc, sums)
    if np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return arr[int(idx[0]) : int(idx[0]) + len(idx)]
    # zarr's orthogonal selection is ~8x slower than this on sharded arrays (measured, zarr 3.1)
    uniq, inverse = np.unique(idx, return_inverse=True)
    return np.stack([arr[int(i)] for i in uniq])[inverse]


def read_raw(root: Path, arr: zarr.Array, idx: np.ndarray, crc=None, sums=None) -> np.ndarray:
    """Rows of a sharded array with raw little-endian chunks, read straight from the shard files.

    A zarr v3 shard ends with its index, one (offset, nbytes) uint64 pair per chunk plus a crc32c; a
    missing chunk has offset 2**64-1 and reads as the fill value 0. ~10x faster than zarr per row.
    """
    shard = arr.shards[0]
    row_shape, dtype = arr.shape[1:], arr.dtype.newbyteorder("<")
    out = np.zeros((len(idx), *row_shape), dtype=arr.dtype)
    tail = "/".join("0" * (arr.ndim - 1))
    order = np.argsort(idx, kind="stable")
    if sums is not None:  # a chunk zarr did not store (all zeros) or a missing file reads as zeros
        sums[:] = crc(bytes(out[0].nbytes))
    j = 0
    while j < len(order):
        s = int(idx[order[j]]) // shard
        k = j
        while k < len(order) and int(idx[order[k]]) // shard == s:
            k += 1
        path = root / str(s) / tail
        if path.exists():
            with open(path, "rb") as f:
                f.seek(-(shard * 16 + 4), os.SEEK_END)
                index = np.frombuffer(f.read(shard * 16), dtype="<u8").reshape(
                    shard, 2
                )  # [S, (offset, nbytes)]
                for o in order[j:k]:
                    off, nbytes = index[int(idx[o]) % shard]
                    if off != 2**64 - 1:
                        f.seek(int(off))
                        buf = f.read(int(nbytes))
                        out[o] = np.frombuffer(buf, dtype=dtype).reshape(row_shape)
                        if crc is not None:
                            sums[o] = crc(buf)
        j = k
    return out
