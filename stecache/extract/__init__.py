"""Stage one: run a frozen backbone once over every clip of a dataset into a zarr feature cache.

Clips are decoded (decoding.py: in the main process or in worker processes, chosen by measurement) into
their views (views.py); the main process runs batched forwards under inference_mode at a batch size chosen
by measurement (batching.py) while a background thread writes finished shards (loop.py). Row i of the
cache is clip i of the dataset; the rows are processed shard by shard and a shard's `done` flags are set
only after its features are stored, so a killed run (SIGKILL included) resumes where it stopped and ends
identical to an uninterrupted one. Under torchrun, rank r takes shards r, r+W, r+2W, ... of one shared cache.
Run: `stecache extract --backbone videomaev2-tiny --data work/synth --cache work/cache.zarr`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..annotations import Dataset, load_dataset
from ..cache import DEFAULT_CODEC, check_url, create_cache, lock, open_cache
from ..config import Config
from ..errors import ExtractionFailed, StecacheError
from .loop import run
from .views import AUG_RATIO, AUG_SCALE, Views, augment, load_views, plan_views

__all__ = [
    "AUG_RATIO", "AUG_SCALE", "ExtractConfig", "Views", "augment", "dataset_from_annotations",
    "default_cache_path", "extract", "last_cache", "load_views", "plan_views", "remember_cache",
]  # fmt: skip


@dataclass(frozen=True)
class ExtractConfig(Config):
    """How to extract; everything that changes the features is recorded in the cache's provenance."""

    batch_size: int | None = None  # views per forward pass; None = chosen by timing candidates (BatchChooser)
    workers: int | None = None  # decoding processes; None = chosen (decoding.Decoded); 0 = the main process
    dtype: str = "float16"  # stored dtype: float16 | float32 (compute is always float32 on CPU)
    test_views: bool = False  # the backbone's multi-view test protocol (clips x crops) instead of 1 view
    train_views: int = 0  # K extra augmented views per clip (random sampling, crop, flip)
    seed: int = 0  # seed of the augmented views: view v of row i uses rng(seed, i, v)
    codec: str = DEFAULT_CODEC  # feature codec of a new cache (see cache.CODECS)
    shard_size: int | None = None  # clips per shard of a new cache; None = ~128 MB shards
    allow_failures: bool = False  # finish without error when some clips cannot be decoded
    strict_decode: bool = False  # fail a clip whose stream breaks after good frames (else: partial clip)
    box_margin: float = 0.0  # grow each annotated box by this fraction of its size on every side
    device: str | None = None  # None = cuda (rank's local GPU) if available, else cpu
    progress: bool = True
    log_every: float = 30.0  # seconds between plain progress lines when stderr is not a terminal


def _dist() -> tuple[int, int, bool]:
    """(rank, world size, initialised here): joins torchrun's process group when WORLD_SIZE > 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    # STECACHE_DIST_BACKEND=gloo: several ranks on one GPU (NCCL refuses that), e.g. in bench/gpu.py
    backend = os.environ.get("STECACHE_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), True


def _broadcast(obj, world: int):
    """Rank 0's `obj` on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def extract(
    dataset: Dataset,
    cache_url: str | Path,
    backbone: str | nn.Module,
    *,
    checkpoint: str | Path | None = None,
    cfg: ExtractConfig = ExtractConfig(),
    frames: int | None = None,
) -> dict:
    """Extract every clip of `dataset` into the cache at `cache_url` (created, or resumed if it exists).

    `backbone` is a name for `backbones.load` (at `frames` frames; None = its native T) or a Backbone-like
    module. Returns a summary dict; raises
    ExtractionFailed after finishing if clips failed (unless cfg.allow_failures), CacheMismatch if the cache
    holds other settings, CacheBusy if another extract is writing it.
    """
    rank, world, own_group = _dist()
    try:
        return _extract(dataset, cache_url, backbone, checkpoint, cfg, rank, world, frames)
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _extract(dataset, cache_url, backbone, checkpoint, cfg, rank, world, frames=None) -> dict:
    t0 = time.perf_counter()
    check_url(cache_url, write=True)  # memory://, zip://, a file: refused before anything runs
    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if isinstance(backbone, str):
        from ..backbones import load

        backbone = load(backbone, checkpoint, device, frames=frames)
    else:
        backbone = backbone.to(device).eval()
    views = plan_views(backbone, cfg)
    n, h, w = backbone.grid
    feature_shape = (n, backbone.channels, h, w)
    provenance = {
        "dataset": Path(dataset.root).resolve().name,  # the data folder's name, for report tables
        "backbone": backbone.provenance(),
        "sampling": views.sampling.to_dict(),
        "preprocess": views.preprocess.to_dict(),
        "views": views.provenance(),
    }
    if "val_from_train" in dataset.provenance:  # the held-out split is part of what the cache is
        provenance["val_from_train"] = dataset.provenance["val_from_train"]
    if any(c.box is not None for c in dataset.clips):
        provenance["box_margin"] = cfg.box_margin
    spec = dict(
        clips=dataset.clips,
        class_names=dataset.classes,
        multi_label=dataset.multi_label,
        feature_shape=feature_shape,
        num_views=views.count,
        provenance=provenance,
        dtype=cfg.dtype,
        shard_size=cfg.shard_size,
        codec=cfg.codec,
    )
    with contextlib.ExitStack() as stack:
        failure = None
        if rank == 0:  # rank 0 alone locks and creates (or checks) the cache; the others follow its verdict
            try:
                stack.enter_context(lock(cache_url))
                create_cache(cache_url, **spec)
            except StecacheError as e:
                failure = e
        failure = _broadcast(failure, world)
        if failure is not None:
            raise failure
        cache = open_cache(cache_url, mode="r+")
        mine = [s for i, s in enumerate(cache.shards()) if i % world == rank]
        done = cache.done
        before = int(done.sum())
        extracted, failed, partial, batch, decode = run(
            cache, mine, done, dataset, backbone, views, cfg, device, rank
        )
        per_rank = [extracted]
        if world > 1:
            import torch.distributed as dist

            gathered = [None] * world
            dist.all_gather_object(gathered, (extracted, failed, partial))
            per_rank = [g[0] for g in gathered]
            extracted = sum(per_rank)
            failed = [f for g in gathered for f in g[1]]
            partial = [f for g in gathered for f in g[2]]
    seconds = time.perf_counter() - t0
    summary = {
        "cache": str(cache_url),
        "clips": len(cache),
        "done": int(open_cache(cache_url).done.sum()),
        "already_done": before,
        "extracted": extracted,
        "per_rank": per_rank,
        "failed": failed,
        "partial": partial,
        "seconds": round(seconds, 3),
        "clips_per_s": round(extracted / seconds, 3) if seconds else None,
        "batch": batch,  # this rank's forward batch: size, how chosen, per-view ms of the timed sizes
        "decode": decode,  # where this rank decoded: workers (0 = in the main process), how chosen
    }
    if failed and not cfg.allow_failures:
        first = "\n  ".join(f"{cid}: {err}" for cid, err in failed[:5])
        raise ExtractionFailed(
            f"{len(failed)} of {len(cache)} clips failed and were skipped ({summary['done']} done); they are "
            f"recorded in {cache_url} (`stecache info`); fix them and re-run, or pass --allow-failures:\n  "
            + first
        )
    return summary


# ---- datasets from annotation files ----------------------------------------------------------------------


def dataset_from_annotations(
    annotations,
    data_root,
    classes: str | Path | None = None,
    multi_label: bool = False,
    val_from_train: float | None = None,
    seed: int = 0,
    fmt: str | None = None,
) -> Dataset:
    """A Dataset from annotation files ({split: file} or [(split or None, file)]) and a data root (or
    {split: root}, key None = default); one class list over all splits; optionally a held-out val."""
    from ..annotations import val_from_train as hold_out

    ds = load_dataset(annotations, data_root, classes=classes, multi_label=multi_label, fmt=fmt)
    return hold_out(ds, val_from_train, seed) if val_from_train else ds


# ---- defaults of the command line ------------------------------------------------------------------------

WORK = Path("work")  # relative to the working directory, like `make demo`
LAST_CACHE = WORK / "last_cache"  # holds the path of the cache `stecache extract` made last


def default_cache_path(backbone: str) -> Path:
    """work/cache-<backbone>.zarr, with image:<dir> / hf:<dir> / timm:<model> named after the last part."""
    for prefix in ("image:", "hf:", "timm:"):
        if backbone.startswith(prefix):
            backbone = prefix[:-1] + "-" + Path(backbone.removeprefix(prefix)).name
    return WORK / f"cache-{backbone}.zarr"


def remember_cache(url: str | Path) -> None:
    """Record `url` as the cache made last (what train-head uses without --cache)."""
    LAST_CACHE.parent.mkdir(parents=True, exist_ok=True)
    LAST_CACHE.write_text(f"{url}\n")


def last_cache() -> str | None:
    """The cache `stecache extract` made last in this working directory, if any."""
    return LAST_CACHE.read_text().strip() or None if LAST_CACHE.is_file() else None
