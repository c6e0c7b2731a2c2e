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
    from . import Cache


def export_h5(url: str | Path, out: str | Path) -> str:
    """Write a cache's features, views, labels, ids, splits, flags and attributes to an HDF5 file."""
    import h5py

    from . import open_cache

    cache = open_cache(url)
    n = len(cache)
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
    return f"exported {n} clips {cache.feature_shape} x {cache.num_views} view(s) to {out}"


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

    from . import DEFAULT_CODEC, Row, create_cache

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StecacheError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        for key in (features, labels):
            if key not in f:
                raise StecacheError(
                    f"{path}: no dataset {key!r} (has {sorted(f.keys())}); see --features/--labels"
                )
        x = f[features]
        if x.ndim == 2:  # pooled [N, c] -> [N, 1, c, 1, 1]
            feature_shape = (1, x.shape[1], 1, 1)
        elif x.ndim == 5:
            feature_shape = tuple(x.shape[1:])
        else:
            raise StecacheError(f"{path}:{features}: shape {x.shape}, expected [N, n, c, h, w] or [N, c]")
        n = x.shape[0]
        y = np.asarray(f[labels])
        meta = json.loads(f.attrs["stecache"]) if "stecache" in f.attrs else {}
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
            return [s.decode() if isinstance(s, bytes) else str(s) for s in f[key][:]]

        if split is not None and "split" in f:
            raise StecacheError(f"{path}: has a 'split' dataset; drop --split {split} or remove the dataset")
        ids, splits, errors = (
            strings("clip_id", "row{i:06d}"),
            strings("split", split or "train"),
            strings("error", ""),
        )
        done = np.asarray(f["done"][:], dtype=bool) if "done" in f else np.ones(n, dtype=bool)
        has_views = "views" in f
        num_views = (f["views"].shape[1] + 1) if has_views else 1
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
            feats = np.asarray(x[a:b]).reshape(b - a, *feature_shape)
            views = np.asarray(f["views"][a:b]) if has_views else None
            cache.write_shard(a, feats, views, done[a:b], errors[a:b])
    return cache
