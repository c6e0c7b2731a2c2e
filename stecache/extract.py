"""Stage one: run a frozen backbone once over every clip of a dataset into a zarr feature cache.

DataLoader worker processes decode and preprocess clips while the main process runs batched forwards under
inference_mode and a background thread writes finished shards. Row i of the cache is clip i of the dataset;
the rows are processed shard by shard and a shard's `done` flags are set only after its features are
stored, so a killed run (SIGKILL included) resumes where it stopped and ends identical to an uninterrupted
one. Under torchrun, rank r takes shards r, r+W, r+2W, ... of one shared cache.
Run: `stecache extract --backbone videomaev2-tiny --data work/synth --cache work/cache.zarr`.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotations import Dataset, load_dataset, resolve_clip
from .batching import BatchChooser, launch
from .cache import DEFAULT_CODEC, Cache, check_url, create_cache, lock, open_cache
from .config import Config
from .errors import ExtractionFailed, StecacheError
from .video import Preprocess, Sampling, load_clip

AUG_SCALE = (0.25, 1.0)  # random-resized-crop area fraction of the short-side square (train views)
AUG_RATIO = (3 / 4, 4 / 3)  # and its aspect-ratio range; horizontal flip with p = 0.5


@dataclass(frozen=True)
class ExtractConfig(Config):
    """How to extract; everything that changes the features is recorded in the cache's provenance."""

    batch_size: int | None = None  # views per forward pass; None = chosen by timing candidates (BatchChooser)
    workers: int | None = None  # decoding processes; None = min(2, cpus) on CPU, cpus - 2 on GPU; 0 = main
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


@dataclass(frozen=True)
class Views:
    """The views of one clip: the main protocol (1 or clips x crops) then K augmented ones."""

    sampling: Sampling
    preprocess: Preprocess
    train: int
    seed: int

    @property
    def count(self) -> int:
        return self.sampling.num_clips * self.preprocess.num_crops + self.train

    def provenance(self) -> dict:
        return {
            "count": self.count,
            "test": [self.sampling.num_clips, self.preprocess.num_crops],
            "train": self.train,
            "train_seed": self.seed if self.train else None,
            "augment": {"scale": list(AUG_SCALE), "ratio": list(AUG_RATIO), "flip": 0.5}
            if self.train
            else None,
        }


def plan_views(backbone: nn.Module, cfg: ExtractConfig) -> Views:
    """Views per clip from the backbone's protocol and the config."""
    sampling, preprocess = backbone.sampling, backbone.preprocess
    if cfg.test_views:
        clips, crops = backbone.test_views
        if crops not in (1, 3):
            raise StecacheError(f"{backbone.name}: test protocol with {crops} crops; only 1 or 3 supported")
        sampling = sampling.replace(num_clips=clips)
        preprocess = preprocess.replace(crop="three" if crops == 3 else "center")
    if cfg.train_views < 0:
        raise StecacheError(f"--train-views {cfg.train_views}: must be >= 0")
    return Views(sampling, preprocess, cfg.train_views, cfg.seed)


def augment(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random resized crop to size² and a random flip: [1, 3, T, S, S] -> [1, 3, T, size, size]."""
    s = x.shape[-1]
    area = s * s * rng.uniform(*AUG_SCALE)
    ratio = math.exp(rng.uniform(math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1])))
    w = min(s, max(1, round(math.sqrt(area * ratio))))
    h = min(s, max(1, round(math.sqrt(area / ratio))))
    top, left = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
    crop = x[0, :, :, top : top + h, left : left + w].transpose(0, 1)  # [T, 3, h, w]
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop.transpose(0, 1)[None]  # [1, 3, T, size, size]


def load_views(path: Path, views: Views, row: int, **source) -> torch.Tensor:
    """All views of one clip, float32 [V, 3, T, H, W]: main views (crop-major) then augmented ones.

    `source` goes to video.load_clip: start/end (segment), box, box_margin, strict, info."""
    out = [load_clip(path, views.sampling, views.preprocess, **source)]
    if views.train:
        p = views.preprocess
        square = p.replace(crop="center", crop_size=p.short_side) if p.crop != "resize" else p
        train_sampling = views.sampling.replace(num_clips=1, test_mode=False)
        for v in range(views.train):
            rng = np.random.default_rng([views.seed, row, v])
            x = load_clip(path, train_sampling, square, rng, **source)
            out.append(augment(x, p.crop_size, rng))
    return torch.cat(out)


class _Reader(torch.utils.data.Dataset):
    """Decodes clip `rows[j]` into its views, or reports why it cannot (runs in DataLoader workers)."""

    def __init__(self, dataset: Dataset, rows: Sequence[int], views: Views, cfg: ExtractConfig):
        self.dataset, self.rows, self.views, self.cfg = dataset, list(rows), views, cfg

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | None, str, str]:
        """(row, views or None, error, partial note "decoded/declared frames" or "")."""
        row = self.rows[j]
        clip, info = self.dataset.clips[row], {}
        try:
            path = resolve_clip(self.dataset.root_of(clip), clip.path)  # refused before anything opens it
            src = dict(start=clip.start, end=clip.end, box=clip.box, box_margin=self.cfg.box_margin)
            x = load_views(path, self.views, row, strict=self.cfg.strict_decode, info=info, **src)
        except Exception as e:  # any clip-level failure is recorded in the cache, never fatal for the run
            return row, None, f"{type(e).__name__}: {e}", ""
        note = f"{info['decoded']}/{info['declared']} frames decoded" if info.get("partial") else ""
        return row, x, "", note


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the forward pass for cores


class _Writer:
    """A background thread storing finished shards in order; a bounded queue keeps memory flat."""

    def __init__(self, cache: Cache, depth: int = 2, on_written=None):
        self.cache, self.error, self.on_written = cache, None, on_written
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.cache.write_shard(*item)
                    if self.on_written is not None:
                        self.on_written(item[0])  # the shard's start row
                except Exception as e:  # re-raised in the main thread by put()/close()
                    self.error = e

    def put(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


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
        from .backbones import load

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
        extracted, failed, partial, batch = _run(
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
    }
    if failed and not cfg.allow_failures:
        first = "\n  ".join(f"{cid}: {err}" for cid, err in failed[:5])
        raise ExtractionFailed(
            f"{len(failed)} of {len(cache)} clips failed and were skipped ({summary['done']} done); they are "
            f"recorded in {cache_url} (`stecache info`); fix them and re-run, or pass --allow-failures:\n  "
            + first
        )
    return summary


def _run(cache, shards, done, dataset, backbone, views, cfg, device, rank) -> tuple[int, list, list, dict]:
    """Decode, forward and write this rank's shards: (extracted, [(clip_id, error)], [(clip_id, partial)],
    the forward batch's provenance).

    Decoded clips are cut into views; forwards take `size` views at a time (the views of one clip may be
    split across two forwards, and a forward may span two shards). A shard is written once every one of its
    rows is resolved (all views stored, or failed). While the batch size is being chosen each forward is
    timed synchronously; afterwards the device output of forward k is collected only after forward k+1 has
    been queued, so on a GPU the host never waits for the device in the loop. A clip with a non-finite
    feature (in the stored dtype) is a failure of that clip, like a decode error.
    """
    from .progress import Progress

    todo = [r for a, b in shards for r in range(a, b) if not done[r]]
    if not todo:
        return 0, [], [], None
    cpus = os.cpu_count() or 1
    if cfg.workers is not None:
        workers = cfg.workers
    else:  # on CPU the forward needs the cores; on a GPU machine decoding has them (two left for the rest)
        workers = min(2, cpus) if device.type == "cpu" else max(1, min(16, cpus - 2))
    reader = _Reader(dataset, todo, views, cfg)
    loader = torch.utils.data.DataLoader(
        reader,
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )
    shard_of = {r: (a, b) for a, b in shards for r in range(a, b)}
    unresolved = {}  # shard start -> todo rows of the shard not yet stored or failed
    for r in todo:
        unresolved[shard_of[r][0]] = unresolved.get(shard_of[r][0], 0) + 1
    v_shape = (views.count, *cache.feature_shape)
    chooser = BatchChooser(device, forced=cfg.batch_size, total=len(todo) * views.count)
    # progress counts a clip when its shard is written (decode and forward run ahead: shown beside it)
    progress = Progress(len(todo), enabled=cfg.progress and rank == 0, log_every=cfg.log_every)
    n_todo = dict(unresolved)
    writer = _Writer(cache, on_written=lambda a: progress.add(written=n_todo[a]))
    bufs: dict = {}  # shard start -> {"feats" [S, V, n, c, h, w], "ok", "errors", "partial"}
    left: dict = {}  # row -> views still to store
    pending: list[tuple[int, int, torch.Tensor]] = []  # (row, view, [3, T, H, W]) awaiting a forward
    inflight = None  # the last forward's (items, output future) not yet collected
    state = {"extracted": 0}
    failed: list = []
    partial: list = []

    def put(a: int, buf: dict) -> None:
        feats = buf["feats"]
        extra = feats[:, 1:] if views.count > 1 else None
        writer.put(a, feats[:, 0], extra, buf["ok"], buf["errors"], buf["partial"])

    def resolve(row: int) -> None:
        a = shard_of[row][0]
        unresolved[a] -= 1
        if not unresolved[a]:
            put(a, bufs.pop(a))

    def collect(job, y=None) -> None:
        items, ready = job
        y = ready.result() if y is None else y  # [B, n, c, h, w] on the host
        for (row, v, _), feats in zip(items, y, strict=True):
            a = shard_of[row][0]
            buf = bufs[a]
            buf["feats"][row - a, v] = feats
            left[row] -= 1
            if left[row]:
                continue
            progress.add(computed=1)
            bad = int((~np.isfinite(buf["feats"][row - a])).sum())  # in the stored dtype (fp16 overflows)
            if bad:  # a failure of this clip, recorded like a decode error; its row stays zeros
                buf["feats"][row - a] = 0
                what = f"{bad} of {buf['feats'][row - a].size} values NaN/inf as {buf['feats'].dtype}"
                buf["errors"][row - a] = f"NonFiniteFeatures: non-finite features, {what}"
                failed.append((dataset.clips[row].clip_id, buf["errors"][row - a]))
            else:
                buf["ok"][row - a] = True
                state["extracted"] += 1
            resolve(row)

    def step(final: bool = False) -> None:
        nonlocal inflight, pending
        while pending and (len(pending) >= chooser.size or final):
            size = chooser.size
            items, pending = pending[:size], pending[size:]
            if chooser.measuring:
                if inflight is not None:
                    collect(inflight)
                    inflight = None
                t = time.perf_counter()  # the forward alone, host copy included; not the bookkeeping
                job = (items, launch(backbone, items, v_shape, device, cache.dtype))
                y = job[1].result()
                chooser.record(len(items), time.perf_counter() - t)
                collect(job, y)
            else:
                job = (items, launch(backbone, items, v_shape, device, cache.dtype))
                if inflight is not None:
                    collect(inflight)
                inflight = job

    try:
        for row, x, err, note in loader:
            a, b = shard_of[row]
            if a not in bufs:  # a new shard: start from what is stored (rows done earlier stay as they are)
                bufs[a] = {
                    "feats": np.zeros((b - a, *v_shape), dtype=cache.dtype),
                    "ok": done[a:b].copy(),
                    "errors": ["" for _ in range(b - a)],
                    "partial": ["" for _ in range(b - a)],
                }
                if bufs[a]["ok"].any():
                    bufs[a]["feats"][:] = cache.read_views(slice(a, b))
            progress.add(decoded=1, computed=1 if err else 0)
            if err:
                bufs[a]["errors"][row - a] = err
                failed.append((dataset.clips[row].clip_id, err))
                resolve(row)
            else:
                bufs[a]["partial"][row - a] = note
                if note:
                    partial.append((dataset.clips[row].clip_id, note))
                left[row] = len(x)
                pending += [(row, v, x[v]) for v in range(len(x))]
            step()
            progress.refresh()
        step(final=True)
        if inflight is not None:
            collect(inflight)
            inflight = None
    except KeyboardInterrupt:  # Ctrl-C: also keep the clips of the unfinished shards already computed
        if inflight is not None:
            collect(inflight)
        for a, buf in bufs.items():
            put(a, buf)
        raise
    finally:  # also on Ctrl-C or errors: shards already complete are still stored
        try:
            writer.close()
        finally:
            progress.close()
    _record_batch(cache, chooser, device, rank)
    return state["extracted"], failed, partial, chooser.provenance(device)


def _record_batch(cache, chooser: BatchChooser, device, rank: int) -> None:
    """Note the forward batch of this run in the cache's (unfingerprinted) `extraction` attribute."""
    if rank == 0:
        cache.group.attrs["extraction"] = chooser.provenance(device)


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
    from .annotations import val_from_train as hold_out

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
