"""What a cache is made of: format version, dtypes, codecs, shard size, the per-clip `Row`, fingerprints.

Shared by the reader (store.py) and the writer (create.py): the attribute names left out of the
fingerprint, the manifest fingerprint that ties row i to clip i, and `attrs_diff`, which names every
setting two caches differ in. Nothing here touches a store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from zarr.codecs import BloscCodec

from ..config import fingerprint

FORMAT_VERSION = 1
# Codec of `features`/`views`, chosen by measurement (bench/bench_cache.py, BENCHMARKS.md): fp16 token maps
# of real encoders compress ~1.1x losslessly while compression cuts read speed 2-4x, so the default is none.
CODECS = {
    "none": None,
    "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
    "zstd": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
}
DEFAULT_CODEC = "none"
SHARD_BYTES = 128 * 2**20  # target shard file size; rows per shard = clamp(SHARD_BYTES // row bytes, 1, 64)
DTYPES = ("float16", "float32")
# Attributes that describe storage or bookkeeping, not content: left out of the fingerprint.
UNFINGERPRINTED = ("created", "fingerprint", "codec", "shard_size", "extraction")


class Row(NamedTuple):
    """The per-clip facts a cache stores (video.Clip has the same fields)."""

    clip_id: str
    labels: tuple[int, ...]
    split: str


def default_shard_size(feature_shape: Sequence[int], num_views: int, dtype: str) -> int:
    """Clips per shard: about SHARD_BYTES per shard file, between 1 and 64, a power of two."""
    row = int(np.prod(feature_shape)) * num_views * np.dtype(dtype).itemsize
    s = max(1, min(64, SHARD_BYTES // max(row, 1)))
    return 1 << (s.bit_length() - 1)


def manifest_fingerprint(clips: Sequence[Any]) -> str:
    """Fingerprint of the ordered (clip_id, labels, split) manifest: row i is clip i."""
    return fingerprint([[c.clip_id, sorted(c.labels), c.split] for c in clips])


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def attrs_diff(old: dict, new: dict) -> list[str]:
    """Lines `key: cache=<old> now=<new>` for every fingerprinted attribute that differs."""
    a = _flatten({k: v for k, v in old.items() if k not in UNFINGERPRINTED})
    b = _flatten({k: v for k, v in new.items() if k not in UNFINGERPRINTED})
    return [
        f"{k}: cache={json.dumps(a.get(k, '<absent>'))} now={json.dumps(b.get(k, '<absent>'))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def _short(e: BaseException, limit: int = 160) -> str:
    """An exception as `Type: message`, cut to `limit` characters (one-line messages stay short)."""
    s = " ".join(f"{type(e).__name__}: {e}".split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
