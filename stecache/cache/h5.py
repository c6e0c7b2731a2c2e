"""HDF5 export and import of a feature cache (users have feature dumps from other tools in HDF5)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import canonical_json
from ..errors import StecacheError

if TYPE_CHECKING:
    from .store import Cache


def export_h5(url: str | Path, out: str | Path, allow_incomplete: bool = False) -> str:
    """Write a cache's features, views, labels, ids, splits, flags and attributes to an HDF5 file.

    A cache with rows neither done nor failed is refused unless `allow_incomplete`; every row read is
    checked against its checksum, and the file is written under a temporary name, then renamed.
    """
    from ..errors import CacheIncomplete
    from .create import open_cache

    cache = open_cache(url)
    n = len(cache)
    pending = int((~cache.done & (cache.error == "")).sum())
    if pending and not allow_incomplete:
        raise CacheIncomplete(
            f"{url}: {pending} of {n} clips are not extracted yet; let extract finish, or pass "
            "--allow-incomplete to export them as zeros with done=False"
        )
    out = Path(out)
    if out.exists() and not out.is_file():
        raise StecacheError(f"{out}: exists and is not a regular file; give a new .h5 path")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _write_h5(cache, tmp, n)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return f"exported {n} clips {cache.feature_shape} x {cache.num_views} view(s) to {out}"


def _write_h5(cache, out: Path, n: int) -> None:
    import h5py

    with h5py.File(out, "w") as f:
        feats = f.create_dataset(
            "features",
            shape=(n, *cache.feature_shape),
            dtype=cache.dtype,
            chunks=(1, *cache.feature_shape) if n else None,
        )
        views = None
        if cache.num_views > 1:
            vshape = (cache.num_views - 1, *cache.feature_shape)
            views = f.create_dataset("views", shape=(n, *vshape), dtype=cache.dtype, chunks=(1, *vshape))
        for a, b in cache.shards():
            x = cache.read_views(slice(a, b))  # [S, V, n, c, h, w]
            feats[a:b] = x[:, 0]
            if views is not None:
                views[a:b] = x[:, 1:]
        string = h5py.string_dtype()
        f["labels"] = cache.labels()
        f.create_dataset("clip_id", data=cache.clip_id.astype(str).tolist(), dtype=string)
        f.create_dataset("split", data=cache.split.astype(str).tolist(), dtype=string)
        f.create_dataset("error", data=cache.error.astype(str).tolist(), dtype=string)
        f["done"] = cache.done
        f.attrs["class_names"] = json.dumps(list(cache.class_names))
        f.attrs["stecache"] = canonical_json(cache.attrs)


def import_h5(
    path: str | Path,
    url: str | Path,
    *,
    features: str = "features",
    labels: str = "labels",
    class_names: Sequence[str] | None = None,
    codec: str | None = None,
    split: str | None = None,
) -> Cache:
    """Make a cache from an HDF5 feature file: `features` [N, n, c, h, w] (or [N, c] pooled), `labels`
    [N] class index or [N, K] multi-hot; optional `clip_id`, `split`, `done`, `error`, `views` datasets.
    Without a `split` dataset every clip is in `split` (default "train")."""
    import h5py

    from .create import create_cache
    from .lock import check_url
    from .schema import DEFAULT_CODEC, Row

    check_url(url, write=True)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StecacheError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        for key in (features, labels):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise StecacheError(
                    f"{path}: no dataset {key!r} (has {sorted(f.keys())[:10]}); see --features/--labels"
                )
        x = f[features]
        if x.dtype.kind not in "fiu":
            raise StecacheError(f"{path}:{features}: dtype {x.dtype} is not numeric; expected float features")
        if x.ndim == 2:  # pooled [N, c] -> [N, 1, c, 1, 1]
            feature_shape = (1, x.shape[1], 1, 1)
        elif x.ndim == 5:
            feature_shape = tuple(x.shape[1:])
        else:
            raise StecacheError(f"{path}:{features}: shape {x.shape}, expected [N, n, c, h, w] or [N, c]")
        n = x.shape[0]
        y = _check_labels(path, labels, f[labels], n, class_names)
        try:
            meta = json.loads(f.attrs["stecache"]) if "stecache" in f.attrs else {}
            meta = meta if isinstance(meta, dict) else {}
        except (json.JSONDecodeError, TypeError) as e:
            raise StecacheError(f"{path}: attribute 'stecache' is not JSON ({e})") from None
        names = list(
            class_names
            or meta.get("class_names")
            or json.loads(f.attrs.get("class_names", "null"))
            or [str(i) for i in range(int(y.max()) + 1 if y.ndim == 1 else y.shape[1])]
        )
        if y.ndim == 1:
            rows_labels = [(int(v),) for v in y]
            multi_label = bool(meta.get("multi_label", False))
        else:
            rows_labels = [tuple(np.flatnonzero(r).tolist()) for r in y]
            multi_label = bool(meta.get("multi_label", True))

        def strings(key: str, default: str) -> list[str]:
            if key not in f:
                return [default.format(i=i) for i in range(n)]
            if f[key].shape != (n,):
                raise StecacheError(f"{path}:{key}: shape {f[key].shape}, expected ({n},) like {features}")
            return [s.decode(errors="replace") if isinstance(s, bytes) else str(s) for s in f[key][:]]

        if split is not None and "split" in f:
            raise StecacheError(f"{path}: has a 'split' dataset; drop --split {split} or remove the dataset")
        ids, splits, errors = (
            strings("clip_id", "row{i:06d}"),
            strings("split", split or "train"),
            strings("error", ""),
        )
        done = np.asarray(f["done"][:], dtype=bool) if "done" in f else np.ones(n, dtype=bool)
        if done.shape != (n,):
            raise StecacheError(f"{path}:done: shape {done.shape}, expected ({n},)")
        has_views = "views" in f
        num_views = (f["views"].shape[1] + 1) if has_views and f["views"].ndim > 1 else 1
        if has_views and tuple(f["views"].shape) != (n, num_views - 1, *feature_shape):
            raise StecacheError(f"{path}:views: shape {f['views'].shape}, expected [N, V-1, n, c, h, w]")
        own = {
            "format_version",
            "stecache_version",
            "dtype",
            "feature_shape",
            "num_views",
            "class_names",
            "multi_label",
            "num_clips",
            "manifest",
            "shard_size",
            "codec",
            "fingerprint",
            "created",
        }
        provenance = {k: v for k, v in meta.items() if k not in own} or {
            "backbone": {"name": f"hdf5:{Path(path).name}", "weights": "unknown"},
            "imported_from": str(path),
        }
        dtype = meta.get("dtype") or ("float16" if x.dtype == np.float16 else "float32")
        cache = create_cache(
            url,
            clips=[Row(i, lab, s) for i, lab, s in zip(ids, rows_labels, splits, strict=True)],
            class_names=names,
            multi_label=multi_label,
            feature_shape=feature_shape,
            num_views=num_views,
            provenance=provenance,
            dtype=dtype,
            shard_size=meta.get("shard_size"),
            codec=codec or meta.get("codec", DEFAULT_CODEC),
        )
        for a, b in cache.shards():
            feats = np.asarray(x[a:b]).reshape(b - a, *feature_shape).astype(dtype)
            views = np.asarray(f["views"][a:b]).astype(dtype) if has_views else None
            ok, err = done[a:b].copy(), list(errors[a:b])
            both = (
                feats.reshape(b - a, -1)
                if views is None
                else np.concatenate([feats.reshape(b - a, -1), views.reshape(b - a, -1)], axis=1)
            )
            for i in np.flatnonzero(~np.isfinite(both).all(1)):  # like extract: a failure of that clip
                ok[i], err[i] = (
                    False,
                    f"NonFiniteFeatures: non-finite values in {path}:{features} row {a + i}",
                )
                feats[i] = 0
                if views is not None:
                    views[i] = 0
            cache.write_shard(a, feats, views, ok, err)
    return cache


def _check_labels(path, key: str, ds, n: int, class_names) -> np.ndarray:
    """Labels [N] (class index) or [N, K] (0/1) checked before anything is allocated from them."""
    from ..data.load import _mem_available

    if ds.ndim not in (1, 2) or ds.shape[0] != n:
        raise StecacheError(f"{path}:{key}: shape {ds.shape}, expected [{n}] class indices or [{n}, K] 0/1")
    y = np.asarray(ds)
    if y.dtype.kind not in "biuf":
        raise StecacheError(f"{path}:{key}: dtype {y.dtype} is not a number")
    if y.size and (not np.isfinite(y).all() or (np.round(y) != y).any()):
        raise StecacheError(f"{path}:{key}: labels must be whole numbers (found {y[np.round(y) != y][:1]})")
    y = y.astype(np.int64)
    if y.ndim == 2 and y.size and not np.isin(y, (0, 1)).all():
        raise StecacheError(f"{path}:{key}: a [N, K] label matrix must hold 0/1 only (found {y.max()})")
    if y.ndim == 1 and y.size and y.min() < 0:
        raise StecacheError(f"{path}:{key}: negative class index {y.min()} at row {int(y.argmin())}")
    k = y.shape[1] if y.ndim == 2 else (int(y.max()) + 1 if y.size else 1)
    k = max(k, len(class_names or ()))
    need = n * k + 100 * k  # the [N, K] uint8 label matrix + K class names
    if need > _mem_available() // 2:
        raise StecacheError(
            f"{path}:{key}: largest label {k - 1} means {k:,} classes, a {need / 1e9:.1f} GB label matrix, "
            "more than half the free memory; labels must be class indices 0..K-1"
        )
    return y
