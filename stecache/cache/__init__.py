"""The feature cache: one zarr v3 group holding a frozen encoder's token maps for every clip of a dataset.

Arrays: `features` [N, n, c, h, w] (float16 by default), one clip per chunk and `shard_size` clips per shard
file; `views` [N, V-1, n, c, h, w] when a clip has V > 1 views; per clip `labels` [N, K] uint8 multi-hot,
`split`, `clip_id`, `done` and `error`. Attributes hold the full provenance and its fingerprint, so stage two
never asks the user to restate anything. Writers fill whole shards and set `done` only after the shard's
features are stored (zarr writes each file atomically), so a killed run loses at most its unfinished shards.
This package is the only code importing zarr (here, raw.py) and h5py (h5.py).
Python: `open_cache("work/cache.zarr").read([0, 1])`.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .. import __version__
from ..config import canonical_json, fingerprint
from ..errors import AnnotationError, CacheBusy, CacheMismatch, StecacheError
from .raw import take

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


def _local_path(url: str | Path) -> Path | None:
    """The local directory of a cache URL, or None for remote (fsspec) stores."""
    s = str(url)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    return None if "://" in s else Path(s)


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


@contextmanager
def lock(url: str | Path) -> Iterator[None]:
    """Hold `<cache>/.lock` while extracting; CacheBusy if another process holds it.

    POSIX record locks (lockf): the kernel drops them when the holder dies (SIGKILL included), and forked
    children such as DataLoader workers do not inherit them, so a killed run never leaves a stale lock.
    """
    path = _local_path(url)
    if path is None:  # object stores have no flock; callers own the one-writer rule there
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CacheBusy(
                f"{url}: cache is busy, {holder} is extracting into it; wait for it to finish or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


class Cache:
    """An open feature cache; arrays are read lazily, `done` and `error` fresh on every access."""

    def __init__(self, group: zarr.Group, url: str | Path):
        self.url = str(url)
        self.group = group
        self.attrs: dict = dict(group.attrs)
        if "fingerprint" not in self.attrs:
            raise CacheMismatch(f"{url}: not a complete stecache cache (no fingerprint attribute)")
        self.fingerprint: str = self.attrs["fingerprint"]
        self.class_names: tuple[str, ...] = tuple(self.attrs["class_names"])
        self.multi_label: bool = bool(self.attrs["multi_label"])
        self.feature_shape: tuple[int, int, int, int] = tuple(self.attrs["feature_shape"])  # (n, c, h, w)
        self.num_views: int = int(self.attrs["num_views"])
        self.dtype: str = self.attrs["dtype"]
        self.shard_size: int = int(self.attrs["shard_size"])
        self._features = group["features"]
        self._views = group["views"] if self.num_views > 1 else None

    def __len__(self) -> int:
        return int(self.attrs["num_clips"])

    def __repr__(self) -> str:
        return f"Cache({self.url!r}, N={len(self)}, features={self.feature_shape}, views={self.num_views})"

    @property
    def done(self) -> np.ndarray:  # [N] bool
        return np.asarray(self.group["done"][:], dtype=bool)

    @property
    def error(self) -> np.ndarray:  # [N] str, "" where no failure
        return np.asarray(self.group["error"][:].tolist(), dtype=object)

    @cached_property
    def split(self) -> np.ndarray:  # [N] str
        return np.asarray(self.group["split"][:].tolist(), dtype=object)

    @cached_property
    def clip_id(self) -> np.ndarray:  # [N] str
        return np.asarray(self.group["clip_id"][:].tolist(), dtype=object)

    @cached_property
    def _labels(self) -> np.ndarray:
        return np.asarray(self.group["labels"][:], dtype=np.uint8)

    def labels(self) -> np.ndarray:
        """Multi-hot labels [N, K] uint8 (single-label caches: exactly one 1 per row)."""
        return self._labels.copy()

    def label_index(self) -> np.ndarray:
        """Class index per clip [N] int64, -1 for unlabelled clips; single-label caches only."""
        if self.multi_label:
            raise StecacheError(f"{self.url}: multi-label cache has no single label index; use labels()")
        return np.where(self._labels.any(1), self._labels.argmax(1), -1).astype(np.int64)

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row indices [M] int64 of done clips (in `split`, if given)."""
        keep = self.done
        if split is not None:
            keep &= self.split == split
        return np.flatnonzero(keep).astype(np.int64)

    def read(self, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Features of `rows` [len(rows), n, c, h, w] in the stored dtype (view 0), any order/repeats."""
        return take(self._features, rows, self._raw_dir("features"))

    def read_views(self, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """All views of `rows` [len(rows), V, n, c, h, w]; view 0 is `read(rows)`."""
        first = self.read(rows)[:, None]
        if self._views is None:
            return first
        return np.concatenate([first, take(self._views, rows, self._raw_dir("views"))], axis=1)

    def _raw_dir(self, name: str) -> Path | None:
        """The array's local directory when its shards hold raw chunks (codec none): read without zarr."""
        path = _local_path(self.url)
        if path is None or self.attrs.get("codec") != "none":
            return None
        (codec,) = self.group[name].metadata.codecs
        inner = getattr(codec, "codecs", ())
        raw = len(inner) == 1 and type(inner[0]).__name__ == "BytesCodec"
        raw = raw and getattr(inner[0].endian, "value", None) == "little"
        return path / name / "c" if raw and codec.index_location.value == "end" else None

    def shards(self) -> list[tuple[int, int]]:
        """Row ranges [start, stop) of the shards, the unit a writer fills."""
        n, s = len(self), self.shard_size
        return [(a, min(a + s, n)) for a in range(0, n, s)]

    def write_shard(
        self,
        start: int,
        features: np.ndarray,
        views: np.ndarray | None,
        ok: np.ndarray,
        errors: Sequence[str],
    ) -> None:
        """Store one shard's rows [start, start+len): features, views, errors, and `done` last."""
        stop = start + len(features)
        if start % self.shard_size or (stop != min(start + self.shard_size, len(self))):
            raise ValueError(f"write_shard({start}, {len(features)} rows) is not one whole shard")
        self._features[start:stop] = features.astype(self.dtype, copy=False)
        if self._views is not None:
            self._views[start:stop] = views.astype(self.dtype, copy=False)
        self.group["error"][start:stop] = np.asarray(list(errors), dtype=str)
        self.group["done"][start:stop] = np.asarray(ok, dtype=bool)  # only now: features are stored

    def nbytes_on_disk(self) -> int | None:
        """Bytes of all files of a local cache (None for remote stores)."""
        path = _local_path(self.url)
        if path is None:
            return None
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    def describe(self) -> str:
        """Human-readable summary: provenance, counts per split and class, failures, done/total, size."""
        done, err, labels = self.done, self.error, self._labels
        n_failed = int((err != "").sum())
        size = self.nbytes_on_disk()
        lines = [
            f"{'cache':<13} {self.url}",
            f"{'fingerprint':<13} {self.fingerprint}  (format {self.attrs['format_version']},"
            f" stecache {self.attrs['stecache_version']}, created {self.attrs['created']})",
        ]
        skip = {"class_names", "fingerprint", "created", "format_version", "stecache_version"}
        for k in sorted(set(self.attrs) - skip):
            v = self.attrs[k]
            if isinstance(v, dict) and v:  # one line per field: the backbone's provenance is long
                lines.append(k)
                lines += [f"  {sub:<22} {canonical_json(x)}" for sub, x in sorted(v.items())]
            else:
                lines.append(f"{k:<13} {canonical_json(v)}")
        lines.append(f"{'done':<13} {int(done.sum())}/{len(self)}  failed {n_failed}")
        lines.append(f"{'on disk':<13} " + ("n/a (remote store)" if size is None else f"{size:,} bytes"))
        splits = sorted(set(self.split.tolist()))
        lines.append(
            f"{'per split':<13} "
            + "  ".join(
                f"{s}: {int((self.split == s).sum())} ({int(done[self.split == s].sum())} done)"
                for s in splits
            )
        )
        lines.append(f"{'class':<24}" + "".join(f"{s:>8}" for s in splits))
        for k, name in enumerate(self.class_names):
            counts = [int(labels[self.split == s, k].sum()) for s in splits]
            lines.append(f"{name[:23]:<24}" + "".join(f"{c:>8}" for c in counts))
        for i in np.flatnonzero(err != "")[:20]:
            lines.append(f"{'failed':<13} row {i} {self.clip_id[i]}: {err[i]}")
        if n_failed > 20:
            lines.append(f"{'failed':<13} ... and {n_failed - 20} more")
        return "\n".join(lines)


def open_cache(url: str | Path, mode: str = "r") -> Cache:
    """Open an existing cache (mode "r" or "r+")."""
    try:
        group = zarr.open_group(str(url), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StecacheError(f"{url}: no feature cache here ({e}); make one with `stecache extract`") from None
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

    path = _local_path(url)
    if path is not None and path.is_dir() and not (path / "zarr.json").exists():
        strays = sorted(p.name for p in path.iterdir() if p.name != ".lock")
        if strays:
            raise StecacheError(
                f"{url}: directory exists and is not a cache (holds {strays[:3]}); pick another"
            )
    group = zarr.open_group(str(url), mode="a")
    if "fingerprint" in group.attrs:  # an existing complete cache: reopen if it is the same one
        old = dict(group.attrs)
        if old["fingerprint"] != attrs["fingerprint"]:
            diff = "\n  ".join(attrs_diff(old, attrs)) or "(format or manifest)"
            raise CacheMismatch(
                f"{url} was made with other settings; use another --cache path or delete it. Differences:\n  "
                + diff
            )
        return Cache(group, url)

    ids = [str(c.clip_id) for c in clips]
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
    group.create_array("error", shape=(n,), chunks=(s,), dtype=str, overwrite=True)
    if n:
        group["labels"][:] = labels
        group["split"][:] = np.asarray([str(c.split) for c in clips], dtype=str)
        group["clip_id"][:] = np.asarray(ids, dtype=str)
    group.attrs.update(
        {**attrs, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    )
    return Cache(group, url)


from .h5 import export_h5, import_h5  # noqa: E402, F401  (re-exported: the API is stecache.cache.*)
