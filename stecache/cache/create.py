"""Opening an existing cache, and creating one (or reopening an identical one) for a list of clips.

`create_cache` checks the clips (unique ids, labels in range) before writing anything, refuses a
directory that is not a cache, raises CacheMismatch naming every differing setting when the path holds
another cache, and writes the arrays first and the attributes (with the fingerprint) last.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .. import __version__
from ..config import canonical_json, fingerprint
from ..errors import AnnotationError, CacheCorrupt, CacheMismatch, StecacheError
from . import verify as V
from .lock import _local_path, check_url
from .schema import (
    CODECS,
    DEFAULT_CODEC,
    DTYPES,
    FORMAT_VERSION,
    UNFINGERPRINTED,
    _short,
    attrs_diff,
    default_shard_size,
    manifest_fingerprint,
)
from .store import Cache


def open_cache(url: str | Path, mode: str = "r") -> Cache:
    """Open an existing cache (mode "r" or "r+")."""
    check_url(url)
    try:
        group = zarr.open_group(str(url), mode=mode)
    except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError) as e:
        raise StecacheError(f"{url}: no feature cache here ({e}); make one with `stecache extract`") from None
    except (ValueError, TypeError, KeyError, OSError, UnicodeDecodeError) as e:  # a damaged zarr.json
        raise CacheCorrupt(f"{url}: zarr.json is damaged or not a zarr v3 group ({_short(e)})") from None
    return Cache(group, url)


def create_cache(
    url: str | Path,
    *,
    clips: Sequence[Any],
    class_names: Sequence[str],
    multi_label: bool,
    feature_shape: Sequence[int],
    num_views: int,
    provenance: dict,
    dtype: str = "float16",
    shard_size: int | None = None,
    codec: str = DEFAULT_CODEC,
) -> Cache:
    """Create a cache for `clips` (row i = clip i), or reopen an identical one; CacheMismatch if it differs.

    `clips` are objects with clip_id, labels (class indices) and split; `provenance` is merged into the
    attributes (backbone provenance, sampling, preprocess, views, ...). Reopening ignores shard_size/codec.
    """
    if dtype not in DTYPES:
        raise StecacheError(f"dtype {dtype!r}: expected one of {DTYPES}")
    if codec not in CODECS:
        raise StecacheError(f"codec {codec!r}: expected one of {sorted(CODECS)}")
    n, k = len(clips), len(class_names)
    shard_size = shard_size or default_shard_size(feature_shape, num_views, dtype)
    attrs = {
        "format_version": FORMAT_VERSION,
        "stecache_version": __version__,
        "dtype": dtype,
        "feature_shape": [int(x) for x in feature_shape],
        "num_views": int(num_views),
        "class_names": list(class_names),
        "multi_label": bool(multi_label),
        "num_clips": n,
        "manifest": manifest_fingerprint(clips),
        "shard_size": int(shard_size),
        "codec": codec,
    }
    clash = sorted(set(attrs) & set(provenance))
    if clash:
        raise ValueError(f"provenance keys {clash} are reserved cache attributes")
    attrs = json.loads(canonical_json({**provenance, **attrs}))
    attrs["fingerprint"] = fingerprint({k: v for k, v in attrs.items() if k not in UNFINGERPRINTED})

    ids = [str(c.clip_id) for c in clips]  # checked before anything is written
    if len(set(ids)) != n:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise AnnotationError(f"clip id {dup!r} appears more than once in the annotations")
    labels = np.zeros((n, k), dtype=np.uint8)  # [N, K]
    for i, c in enumerate(clips):
        for lab in c.labels:
            if not 0 <= int(lab) < k:
                raise AnnotationError(f"clip {c.clip_id!r}: label {lab} outside 0..{k - 1} ({k} classes)")
            labels[i, int(lab)] = 1
    if not multi_label and n and (labels.sum(1) > 1).any():
        bad = ids[int(np.flatnonzero(labels.sum(1) > 1)[0])]
        raise AnnotationError(f"clip {bad!r}: single-label dataset needs at most one label per clip")

    path = _local_path(url)
    if path is not None and path.is_dir() and not (path / "zarr.json").exists():
        strays = sorted(p.name for p in path.iterdir() if p.name != ".lock")
        if strays:
            raise StecacheError(
                f"{url}: directory exists and is not a cache (holds {strays[:3]}); pick another"
            )
    try:
        group = zarr.open_group(str(url), mode="a")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:  # a damaged zarr.json
        raise CacheCorrupt(f"{url}: zarr.json is damaged or not a zarr v3 group ({_short(e)})") from None
    if "fingerprint" in group.attrs:  # an existing complete cache: reopen if it is the same one
        old = dict(group.attrs)
        if old["fingerprint"] != attrs["fingerprint"]:
            diff = "\n  ".join(attrs_diff(old, attrs)) or "(format or manifest)"
            raise CacheMismatch(
                f"{url} was made with other settings; use another --cache path or delete it. Differences:\n  "
                + diff
            )
        return Cache(group, url)

    # Arrays first, attributes (with the fingerprint) last: a cache without fingerprint is incomplete.
    s = int(shard_size)
    comp = CODECS[codec]
    row_shape = tuple(int(x) for x in feature_shape)
    kw = {"dtype": dtype, "fill_value": 0, "compressors": comp, "overwrite": True}
    group.create_array(
        "features", shape=(n, *row_shape), chunks=(1, *row_shape), shards=(s, *row_shape), **kw
    )
    if num_views > 1:
        vshape = (num_views - 1, *row_shape)
        group.create_array("views", shape=(n, *vshape), chunks=(1, *vshape), shards=(s, *vshape), **kw)
    group.create_array("labels", shape=(n, k), chunks=(max(n, 1), max(k, 1)), dtype="uint8", overwrite=True)
    group.create_array("split", shape=(n,), chunks=(max(n, 1),), dtype=str, overwrite=True)
    group.create_array("clip_id", shape=(n,), chunks=(max(n, 1),), dtype=str, overwrite=True)
    # done/error: one chunk per shard, so ranks owning disjoint shards never write the same file.
    group.create_array("done", shape=(n,), chunks=(s,), dtype=bool, fill_value=False, overwrite=True)
    for name in ["features"] + (["views"] if num_views > 1 else []):  # per-row checksums (verify.py)
        group.create_array(V.ARRAYS[name], shape=(n,), chunks=(s,), dtype="int64", fill_value=V.NONE,
                           overwrite=True, attributes={"hash": V.HASH})  # fmt: skip
    group.create_array("error", shape=(n,), chunks=(s,), dtype=str, overwrite=True)
    group.create_array("partial", shape=(n,), chunks=(s,), dtype=str, overwrite=True)
    if n:
        group["labels"][:] = labels
        group["split"][:] = np.asarray([str(c.split) for c in clips], dtype=str)
        group["clip_id"][:] = np.asarray(ids, dtype=str)
    group.attrs.update(
        {**attrs, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    )
    return Cache(group, url)
