"""`Cache`: an open feature cache — its attributes, per-clip arrays, checksummed reads and shard writes.

Reads go through `raw.take` (raw shard files read directly when the codec is none) and are checked
against the per-row checksums of verify.py the first time an object reads a row; a damaged shard file is
named with its clip ids. `write_shard` stores one whole shard and sets `done` last. Made by `open_cache`
or `create_cache` (create.py). Python: `open_cache("work/cache.zarr").read([0, 1])`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from ..errors import CacheCorrupt, CacheMismatch, StecacheError
from . import verify as V
from .lock import _local_path
from .raw import take
from .schema import _short


class Cache:
    """An open feature cache; arrays are read lazily, `done` and `error` fresh on every access."""

    def __init__(self, group: zarr.Group, url: str | Path):
        self.url = str(url)
        self.group = group
        self.attrs: dict = dict(group.attrs)
        if "fingerprint" not in self.attrs:
            raise CacheMismatch(f"{url}: not a complete stecache cache (no fingerprint attribute)")
        try:
            self.fingerprint: str = self.attrs["fingerprint"]
            self.class_names: tuple[str, ...] = tuple(self.attrs["class_names"])
            self.multi_label: bool = bool(self.attrs["multi_label"])
            self.feature_shape: tuple[int, int, int, int] = tuple(self.attrs["feature_shape"])  # (n, c, h, w)
            self.num_views: int = int(self.attrs["num_views"])
            self.dtype: str = self.attrs["dtype"]
            self.shard_size: int = int(self.attrs["shard_size"])
            self._features = group["features"]
            self._views = group["views"] if self.num_views > 1 else None
        except (KeyError, TypeError, ValueError) as e:
            raise CacheCorrupt(f"{url}: zarr.json or an array's metadata is damaged ({_short(e)})") from None
        self._checksums: dict[str, np.ndarray | None] = {}
        self._raw_dirs: dict[str, Path | None] = {}
        self._verified: dict[str, np.ndarray] = {}  # [N] bool per array: rows this object has checked

    def __len__(self) -> int:
        return int(self.attrs["num_clips"])

    def __repr__(self) -> str:
        return f"Cache({self.url!r}, N={len(self)}, features={self.feature_shape}, views={self.num_views})"

    def _meta(self, name: str) -> np.ndarray:
        """A whole per-clip array; CacheCorrupt naming it if its files cannot be read."""
        try:
            x = self.group[name][:]
        except Exception as e:  # zarr/numcodecs raise many kinds on damaged chunks; all mean the same here
            raise CacheCorrupt(f"{self.url}: the {name!r} array is damaged ({_short(e)})") from None
        if x.shape[:1] != (len(self),):
            raise CacheCorrupt(f"{self.url}: the {name!r} array has shape {x.shape}, not {len(self)} rows")
        return x

    @property
    def done(self) -> np.ndarray:  # [N] bool
        return np.asarray(self._meta("done"), dtype=bool)

    @property
    def error(self) -> np.ndarray:  # [N] str, "" where no failure
        return np.asarray(self._meta("error").tolist(), dtype=object)

    @property
    def partial(self) -> np.ndarray:  # [N] str, "decoded/declared frames" where a stream broke, else ""
        if "partial" not in self.group:  # caches made before partial clips were recorded
            return np.full(len(self), "", dtype=object)
        return np.asarray(self.group["partial"][:].tolist(), dtype=object)

    @cached_property
    def split(self) -> np.ndarray:  # [N] str
        return np.asarray(self._meta("split").tolist(), dtype=object)

    @cached_property
    def clip_id(self) -> np.ndarray:  # [N] str
        return np.asarray(self._meta("clip_id").tolist(), dtype=object)

    @cached_property
    def _labels(self) -> np.ndarray:
        return np.asarray(self._meta("labels"), dtype=np.uint8)

    @cached_property
    def checksum_hash(self) -> str | None:
        """The hash of the per-clip checksums ("crc32c"), None for caches made before checksums."""
        if V.ARRAYS["features"] not in self.group:
            return None
        name = self.group[V.ARRAYS["features"]].attrs.get("hash")
        if name not in V.HASHES or V.HASHES[name] is None:
            raise CacheCorrupt(f"{self.url}: checksums use hash {name!r}, which this stecache cannot compute")
        return name

    def _damaged_shard(self, name: str, rows, error: Exception) -> str:
        """One line naming the first shard file of `rows` that cannot be read, and its clip ids."""
        idx = np.arange(*rows.indices(len(self))) if isinstance(rows, slice) else np.asarray(rows)
        for s in np.unique(idx // self.shard_size):
            a, b = int(s) * self.shard_size, min((int(s) + 1) * self.shard_size, len(self))
            try:
                take(self._features if name == "features" else self._views, slice(a, b), self._raw_dir(name))
            except Exception as e:  # this is the one
                ids = ", ".join(map(str, self.clip_id[a : min(b, a + 5)])) + (" ..." if b - a > 5 else "")
                where = f"{self.url}: shard file {V.shard_file(self, name, a)}"
                return f"{where} is damaged ({_short(e, 60)}): clips {ids}; run `stecache verify --repair`"
        return f"{self.url}: a shard file of {name!r} is damaged ({_short(error)})"

    def content_digest(self) -> str | None:
        """A digest of what the cache holds: done flags and the checksums of done rows (None: no checksums).

        Two copies with equal digests hold the same bytes; computed from the checksum arrays, not the data.
        """
        if not self.checksum_hash:
            return None
        import hashlib

        done = self.done
        h = hashlib.sha256(done.tobytes())
        for name in ["features"] + (["views"] if self._views is not None else []):
            h.update(np.where(done, self.stored_checksums(name), V.NONE).astype("<i8").tobytes())
        return f"{self.checksum_hash}:{h.hexdigest()[:16]}"

    def stored_checksums(self, name: str) -> np.ndarray | None:
        """Stored checksums of array `name` [N] int64 (-1: row never written), None if the cache has none."""
        if name not in self._checksums:
            key = V.ARRAYS[name]
            have = self.checksum_hash and key in self.group
            self._checksums[name] = np.asarray(self._meta(key), dtype=np.int64) if have else None
        return self._checksums[name]

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
        """Features of `rows` [len(rows), n, c, h, w] in the stored dtype (view 0), any order/repeats.

        Each row is checked against its checksum the first time this object reads it: CacheCorrupt names
        the shard files and clip ids.
        """
        return self.read_array("features", rows)

    def read_views(self, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """All views of `rows` [len(rows), V, n, c, h, w]; view 0 is `read(rows)`."""
        first = self.read(rows)[:, None]
        if self._views is None:
            return first
        return np.concatenate([first, self.read_array("views", rows)], axis=1)

    def read_array(self, name: str, rows, verify: bool = True) -> np.ndarray:
        """Rows of `features` or `views`; typed errors for damaged shard files, checksums checked."""
        arr = self._features if name == "features" else self._views
        verify = verify and self.checksum_hash is not None
        if verify:
            idx = np.arange(*rows.indices(len(self))) if isinstance(rows, slice) else rows
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            seen = self._verified.setdefault(name, np.zeros(len(self), dtype=bool))
            verify = not seen[idx[(idx >= 0) & (idx < len(self))]].all()  # checked once per open cache
        raw = self._raw_dir(name)
        sums = np.empty(len(idx), np.int64) if verify and raw is not None else None
        try:
            x = take(arr, rows, raw, V.HASHES[self.checksum_hash] if sums is not None else None, sums)
        except IndexError:
            raise
        except Exception as e:  # truncated or garbled shard files: zarr, numcodecs or OS errors
            raise CacheCorrupt(self._damaged_shard(name, rows, e)) from None
        if verify:
            V.check_rows(self, name, idx, x, sums)
            seen[idx] = True
        return x

    def _raw_dir(self, name: str) -> Path | None:
        """The array's local directory when its shards hold raw chunks (codec none): read without zarr."""
        if name in self._raw_dirs:
            return self._raw_dirs[name]
        self._raw_dirs[name] = self._find_raw_dir(name)
        return self._raw_dirs[name]

    def _find_raw_dir(self, name: str) -> Path | None:
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
        partial: Sequence[str] | None = None,
    ) -> None:
        """Store one shard's rows [start, start+len): features, views, errors, partial notes, `done` last."""
        stop = start + len(features)
        if start % self.shard_size or (stop != min(start + self.shard_size, len(self))):
            raise ValueError(f"write_shard({start}, {len(features)} rows) is not one whole shard")
        features = features.astype(self.dtype, copy=False)
        self._features[start:stop] = features
        sums = {"features": V.row_checksums(features, self.checksum_hash)} if self.checksum_hash else {}
        if self._views is not None:
            views = views.astype(self.dtype, copy=False)
            self._views[start:stop] = views
            if sums:
                sums["views"] = V.row_checksums(views, self.checksum_hash)
        for name, s in sums.items():  # checksums after the data, before `done`
            self.group[V.ARRAYS[name]][start:stop] = s
            if self._checksums.get(name) is not None:
                self._checksums[name][start:stop] = s
            if name in self._verified:
                self._verified[name][start:stop] = False
        self.group["error"][start:stop] = np.asarray(list(errors), dtype=str)
        if partial is not None and "partial" in self.group:
            self.group["partial"][start:stop] = np.asarray(list(partial), dtype=str)
        self.group["done"][start:stop] = np.asarray(ok, dtype=bool)  # only now: features are stored

    def mark_not_done(self, rows: np.ndarray) -> int:
        """Mark `rows` not done (no error, no checksum) so the next extract redoes exactly them.

        Whole shard chunks are rewritten, so a damaged `done` or `error` chunk is replaced, not read.
        """
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        for a, b in self.shards():
            hit = rows[(rows >= a) & (rows < b)]
            if len(hit) == 0:
                continue
            try:
                done, err = self.done[a:b].copy(), self.error[a:b].copy()
            except CacheCorrupt:
                done, err = np.zeros(b - a, bool), np.asarray([""] * (b - a), dtype=object)
            done[hit - a], err[hit - a] = False, ""
            for name in ["features"] + (["views"] if self._views is not None else []):
                if self.checksum_hash:
                    try:
                        sums = np.asarray(self.group[V.ARRAYS[name]][a:b], dtype=np.int64)
                    except Exception:  # a damaged checksum chunk: its rows are redone anyway
                        sums, done[:] = np.full(b - a, V.NONE, np.int64), False
                    sums[hit - a] = V.NONE
                    self.group[V.ARRAYS[name]][a:b] = sums
            self.group["error"][a:b] = np.asarray(err.tolist(), dtype=str)
            self.group["done"][a:b] = done
            root = _local_path(self.url)
            if root is not None and not done.any():  # nothing in it is kept: a damaged file would block
                for name in ["features"] + (["views"] if self._views is not None else []):  # zarr's writes
                    (root / V.shard_file(self, name, a)).unlink(missing_ok=True)
        self._checksums.clear()
        self._verified.clear()
        return len(rows)

    def nbytes_on_disk(self) -> int | None:
        """Bytes of all files of a local cache (None for remote stores)."""
        path = _local_path(self.url)
        if path is None:
            return None
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    def describe(self) -> str:
        """Human-readable summary: provenance, counts per split and class, failures, done/total, size."""
        from .describe import describe

        return describe(self)
