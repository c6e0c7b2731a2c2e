"""Stage two: train one classifier head from a feature cache with the paper's protocol (§III-B).

AdamW (decay 0.05 on weights, none on biases/norms), lr 1e-3 per 256 clips scaled with the global batch,
linear warm-up for min(warmup_epochs, epochs // 5) epochs then cosine to 0, per step; BCE-with-logits
(multi-label) or cross-entropy. Validation every epoch picks the best epoch (macro-F1 at 0.5 or Acc@1);
test is evaluated once with it. A killed run resumes bit-identically from its last epoch. Under torchrun,
DDP: every rank takes every world-th clip of the same global batch, loss normalised by the global batch.
Python: `train(TrainConfig(head="ste", depth=2), "work/cache.zarr")`; CLI: `stecache train-head`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import data as D
from . import metrics as M
from . import runio, tb
from .config import Config, check_range, fingerprint
from .errors import NonFiniteLoss, RunError, StecacheError, TrainError

log = logging.getLogger(__name__)

RESUME_FILE = "resume.safetensors"  # the resume checkpoint (safetensors + JSON header, see runio.py)
# every file that only serves resuming (may go once a run is finished); last.pt: the pickle checkpoint of
# older versions, never loaded
RESUME_FILES = (RESUME_FILE, "last.pt")
FINISHED_FILES = ("config.json", "best.safetensors", "metrics.json")  # what a finished run keeps


# (low, high, kind) of every numeric TrainConfig field; seeds as numpy's and torch's generators take them
LIMITS = {
    "epochs": (1, 100_000, int), "warmup_epochs": (0, 100_000, int), "batch_size": (1, 1 << 20, int),
    "seed": (0, 2**63 - 1, int), "data_seed": (0, 2**63 - 1, int), "depth": (0, 1000, int),
    "lr": (1e-12, 10.0, float), "weight_decay": (0.0, 10.0, float),
}  # fmt: skip


def _non_finite(obj, key: str = "") -> str | None:
    """The key of the first NaN/inf float in a nested option mapping, None if all are finite."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{key}={obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        if bad := _non_finite(v, f"{key}[{k}]" if key else str(k)):
            return bad
    return None


@dataclass(frozen=True)
class TrainConfig(Config):
    """Everything that decides a training run's result (the cache is named separately)."""

    head: str = "ste"
    depth: int | None = None  # None: the head's smallest valid depth
    head_options: dict = field(default_factory=dict)  # passed to heads.build_head
    epochs: int = 30  # paper: 100 (5 warm-up + 95 cosine)
    warmup_epochs: int = 5  # capped at epochs // 5
    lr: float = 1e-3  # for a global batch of 256; scaled linearly
    batch_size: int = 32  # global batch (all ranks together)
    weight_decay: float = 0.05
    seed: int = 0
    data_seed: int | None = None  # seed of the batch order and views; None: `seed` (fix it to share a pass)
    balanced: bool = True  # class-balanced weighted sampler (data.sample_weights)
    tune_threshold: bool = True  # multi-label: also report test at the val-tuned global threshold
    train_views: str = "all"  # "all": one random stored view (test or augmented) per clip per epoch; "first"
    test_views: str = "test"  # "test": average probabilities over the test views (mmaction2 'prob'); "first"
    ram_limit: str | None = None  # bytes (K/M/G suffix) a split may take in RAM; None: data.ram_limit()
    val_split: str = "val"  # the split epochs are selected on (e.g. one `extract --val-from-train` made)

    def __post_init__(self):
        for key, ok in (("train_views", ("all", "first")), ("test_views", ("test", "first"))):
            if getattr(self, key) not in ok:
                raise TrainError(f"{key} must be one of {', '.join(ok)}, not {getattr(self, key)!r}")
        for key, (lo, hi, kind) in LIMITS.items():  # finite and in range, checked before anything is written
            value = getattr(self, key)
            if value is None and key in ("depth", "data_seed"):
                continue
            if msg := check_range(key, value, lo, hi, kind):
                raise TrainError(msg)
        for key in ("balanced", "tune_threshold"):
            if not isinstance(getattr(self, key), bool):
                raise TrainError(f"{key} must be true or false, not {getattr(self, key)!r}")
        if not isinstance(self.head, str) or not isinstance(self.head_options, dict):
            raise TrainError(f"head must be a name and head_options a mapping, not {self.head!r}, "
                             f"{self.head_options!r}")  # fmt: skip
        if bad := _non_finite(self.head_options):
            raise TrainError(f"head option {bad} must be a finite number")
        if self.ram_limit is not None:
            try:
                D.ram_limit(self.ram_limit)
            except StecacheError as e:
                raise TrainError(str(e).replace(" (STECACHE_RAM_LIMIT)", " (--ram-limit)")) from None

    @property
    def batch_seed(self) -> int:
        """Seed of the batch order and view draws."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256

    @property
    def warmup(self) -> int:
        return min(self.warmup_epochs, self.epochs // 5)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then cosine to 0."""
    warm, total = cfg.warmup * steps_per_epoch, cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.scaled_lr * (step + 1) / warm
    return cfg.scaled_lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


# ---- the pieces --------------------------------------------------------------------------------------


def _dist() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = os.environ.get("STECACHE_DIST_BACKEND")  # gloo: several ranks on one GPU (bench/gpu.py)
        torch.distributed.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def make_head(cfg: TrainConfig, cache):
    """The head of `cfg` for this cache's feature shape and classes (seeded)."""
    from .heads import build_head

    torch.manual_seed(cfg.seed)
    return build_head(cfg.head, cache.feature_shape, len(cache.class_names), cfg.depth, **cfg.head_options)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Summed (not averaged) loss of a batch: BCE-with-logits over K classes, or cross-entropy."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[1]
    return F.cross_entropy(logits, y, reduction="sum")


@torch.no_grad()
def predict_many(heads: list, split: D.SplitData, multi_label: bool, batch_size=64, device="cpu") -> list:
    """Probabilities [M, K] per head (sigmoid or softmax), averaged over the split's served views (mmaction2
    'prob'), all heads in one pass over the split."""
    for h in heads:
        h.eval()
    outs = [np.zeros((len(split), len(split.labels[0]))) for _ in heads]
    for pos, x in D.prefetch(D.batches(split, np.arange(len(split)), batch_size)):  # x: [b, V, n, c, h, w]
        x = D.to_tensor(x, device)
        for h, out in zip(heads, outs, strict=True):
            logits = torch.stack([h(x[:, v]) for v in range(x.shape[1])], 1)  # [b, V, K]
            probs = torch.sigmoid(logits) if multi_label else logits.softmax(-1)
            out[pos] = probs.mean(1).cpu().numpy()
    return outs


def predict(head, split: D.SplitData, multi_label: bool, batch_size: int = 64, device="cpu") -> np.ndarray:
    """Probabilities [M, K] of one head, averaged over the split's served views (mmaction2 'prob')."""
    return predict_many([head], split, multi_label, batch_size, device)[0]


def make_optimizer(head, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW at the scaled lr; no weight decay on biases and norms."""
    params = [p for p in head.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
        lr=cfg.scaled_lr,
    )  # fmt: skip


def epoch_batches(split: D.SplitData, cfg: TrainConfig, epoch: int, weights, device=None) -> Iterator:
    """This epoch's (positions, features [b, 1, n, c, h, w]) batches, prepared in a background thread
    (for a CUDA `device` as page-locked host tensors, copied without blocking)."""
    order = D.epoch_rows(len(split), cfg.batch_seed, epoch, weights)
    views = D.epoch_views(len(split), split.views, cfg.batch_seed, epoch)
    it = D.batches(split, order, cfg.batch_size, views, cfg.batch_seed + epoch)
    return D.prefetch(D.pinned(it) if device is not None and torch.device(device).type == "cuda" else it)


def save_epoch(out: Path, head, opt, rng, epoch: int, best: float, best_epoch: int, history: list,
               identity: dict, cuda_rng=None) -> None:  # fmt: skip
    """What a run folder holds after each epoch: the log, last weights, then the resume checkpoint that
    claims the epoch done (a kill before it redoes the epoch and rewrites the same log)."""
    _save("".join(json.dumps(h) + "\n" for h in history), out / "log.jsonl")
    _save(head.state_dict(), out / "last.safetensors")
    meta = {"run": fingerprint(_identity(identity)), "epoch": epoch + 1, "best": best,
            "best_epoch": best_epoch, "history": history}  # fmt: skip
    runio.save_state(out / RESUME_FILE, head, opt, rng, meta, cuda_rng)


def finite_weights(head) -> bool:
    """Whether every parameter and buffer of `head` is finite (a head that is not can never be best)."""
    return all(bool(torch.isfinite(t).all()) for t in head.state_dict().values() if t.is_floating_point())


def non_finite_loss(epoch: int, batch: int, loss: torch.Tensor, xb: torch.Tensor, clip_ids) -> NonFiniteLoss:
    """The error stopping a run whose loss is NaN/inf: epoch, batch, clips (non-finite features first)."""
    bad = ~torch.isfinite(xb.flatten(1)).all(1).cpu().numpy()
    ids = list(np.asarray(clip_ids)[bad] if bad.any() else clip_ids)
    which = "with non-finite features" if bad.any() else "in the batch"
    return NonFiniteLoss(
        f"epoch {epoch + 1}, batch {batch + 1}: loss is {loss.item()}; clips {which}: "
        f"{', '.join(map(str, ids[:5]))}{f' (+{len(ids) - 5} more)' if len(ids) > 5 else ''}; "
        "check the cache (`stecache verify`) or lower --lr"
    )


def _finite(obj):
    """NaN (an undefined metric, e.g. AP of a class without positives) → None, for strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return [_finite(v) for v in obj] if isinstance(obj, list) else obj


def _save(obj, path: Path) -> None:
    """Write atomically and durably: a kill or power loss leaves either the old or the new file."""
    if path.suffix == ".safetensors":
        tmp = path.with_name(path.name + runio.TMP_SUFFIX)
        save_file({k: v.contiguous() for k, v in obj.items()}, str(tmp))
        runio.commit(tmp, path)
    else:
        runio.write_file(path, obj)


_SHORT = {"epochs": "ep", "batch_size": "bs", "weight_decay": "wd", "warmup_epochs": "wu", "data_seed": "ds"}


def run_name(cfg: TrainConfig, cache) -> str:
    """Default run folder name: cache (backbone) name, head, depth, every setting that differs from the
    defaults (a swept value shows), seed, and a short hash of config + cache, e.g.
    `synth-videomaev2-tiny-ste-d1-ep20-lr0.01-s0-3fa9c1`."""
    h = fingerprint({"config": cfg.to_dict(), "cache": cache.fingerprint})[:6]
    base = Path(str(cache.url).rstrip("/")).name.removesuffix(".zarr")
    prov = cache.attrs.get("backbone", {})
    backbone = prov.get("name") if isinstance(prov, dict) else prov
    if backbone and str(backbone) not in base:
        base = f"{backbone}-{base}"
    default, now = TrainConfig().to_dict(), cfg.to_dict()
    skip = ("head", "depth", "seed", "head_options", "ram_limit")
    parts = [f"{_SHORT.get(k, k)}{now[k]}" for k in now if k not in skip and now[k] != default[k]]
    parts += [f"{k}{v}" for k, v in sorted(cfg.head_options.items())]
    depth = f"d{cfg.depth if cfg.depth is not None else 'x'}"
    name = "-".join([base, cfg.head, depth, *parts, f"s{cfg.seed}", h])
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _check_classes(cache, train: D.SplitData) -> None:
    if not cache.multi_label and len(cache.class_names) < 2:  # softmax over one class: always 100 %
        raise TrainError(
            f"cache {cache.url}: a single-label cache with one class ({cache.class_names[0]}) has nothing to "
            "classify; add a negative class (e.g. 'others') or make the cache multi-label (one sigmoid)"
        )
    counts = train.labels.sum(0)
    missing = [cache.class_names[k] for k in np.flatnonzero(counts == 0)]
    if missing:
        names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TrainError(  # a few names: the one-line message must keep its reason and the remedy
            f"cache {cache.url}: {len(missing)} class(es) ({names}) have no training clips; "
            "add examples or drop the class from the annotations"
        )


# ---- training ----------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    cache_url: str,
    out_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    resume: bool | None = None,
    progress: bool = True,
    device: str | None = None,
    keep_checkpoints: bool = False,
    resident: str = "auto",
) -> dict:
    """Train `cfg` on the cache at `cache_url` into `out_dir` (default runs_root/run_name); metrics dict.

    resume=None: resume when the folder holds a checkpoint of the same config and cache; True: must
    resume; False: start over. The run folder is locked (RunBusy for a second writer) while training.
    device: None = cuda (this rank's GPU) if available, else cpu. A finished run keeps its weights and
    drops the resume checkpoint unless keep_checkpoints. resident: keep the training split's features in
    device memory (data.make_resident: "auto" = on CUDA when it fits, "on", "off"); results do not
    depend on it.
    """
    with contextlib.ExitStack() as stack:
        return _train(cfg, cache_url, out_dir, runs_root, resume, progress, device, keep_checkpoints,
                      resident, stack)  # fmt: skip


def _train(cfg, cache_url, out_dir, runs_root, resume, progress, device, keep_checkpoints, resident,
           stack: contextlib.ExitStack) -> dict:  # fmt: skip
    from tqdm import tqdm

    from .cache import open_cache

    rank, world = _dist()
    if device is None:
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else "cpu"
    cache = open_cache(cache_url)
    failed = D.check_complete(cache)
    head = make_head(cfg, cache).to(device)  # unknown head / bad depth / patch fail here
    cfg = cfg.replace(depth=head.depth)
    multi = bool(cache.multi_label)
    limit = cfg.ram_limit
    train_split = D.load_split(cache, "train", views=cfg.train_views, limit=limit)
    _check_classes(cache, train_split)
    D.make_resident(train_split, device, resident)
    val_split = D.load_split(cache, cfg.val_split, views=cfg.test_views, limit=limit)
    if world > 1 and cfg.batch_size % world:
        raise TrainError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")

    out = Path(out_dir) if out_dir else Path(runs_root) / run_name(cfg, cache)
    identity = {"config": cfg.to_dict(), "cache_fingerprint": cache.fingerprint}  # what resume must match
    if rank == 0:
        stack.enter_context(runio.lock(out))  # one writer; cleans temp files of a killed run
    state = _resume_state(out, identity, resume)
    if state is None and resume is not False and all((out / f).is_file() for f in FINISHED_FILES):
        log.info("%s: already finished (same config and cache); --no-resume trains it again", out)
        return read_metrics(out) | {"run_dir": str(out)}  # its resume state was dropped: nothing to redo
    if rank == 0:
        write_run_config(out, cfg, cache, failed, world)

    targets = torch.from_numpy(train_split.targets(multi)).to(device)  # moved once
    weights = D.sample_weights(train_split.labels) if cfg.balanced else None
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    opt = make_optimizer(head, cfg)
    history, best, best_epoch, start = [], -math.inf, -1, 0
    if state is not None:
        rng, history, best, best_epoch, start, cuda_rng = restore(state, head, opt, identity, cfg, cuda=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None and torch.device(device).type == "cuda":  # dropout on the GPU
            torch.cuda.set_rng_state(cuda_rng, device)
        log.info("resuming %s after epoch %d of %d", out, start, cfg.epochs)
    model = torch.nn.parallel.DistributedDataParallel(head) if world > 1 else head
    key = M.main_metric(multi)

    ahead = None  # the next epoch's batches, read during this epoch's validation
    check_each_step = torch.device(device).type != "cuda"  # a finite-loss check syncs with a GPU
    for epoch in range(start, cfg.epochs):
        t0, wait, loss_sum = time.perf_counter(), 0.0, torch.zeros(2, dtype=torch.float64)
        loss_dev = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync a step
        it = ahead or epoch_batches(train_split, cfg, epoch, weights, device)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if progress and rank == 0 else True)  # fmt: skip
        head.train()
        for i in range(steps_per_epoch):
            tw = time.perf_counter()
            pos, x = next(it)  # global batch; this rank takes every world-th clip
            wait += time.perf_counter() - tw
            lr = lr_at(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            mine = slice(rank, None, world)
            xb, yb = D.to_tensor(x[mine, 0], device), targets[torch.as_tensor(pos[mine]).to(device)]
            loss = loss_fn(model(xb), yb, multi)
            if check_each_step and not torch.isfinite(loss):  # CPU: free; CUDA: once an epoch, below
                raise non_finite_loss(epoch, i, loss, xb, cache.clip_id[train_split.rows[pos[mine]]])
            # mean over the GLOBAL batch; DDP averages gradients over ranks, hence × world
            (loss * world / len(pos)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_dev += loss.detach()
            loss_sum[1] += len(pos[mine])
            bar.update()
            if bar.disable is False and i % 50 == 49:  # the bar's loss: one host sync per 50 steps
                bar.set_postfix(loss=f"{loss_dev.item() / float(loss_sum[1]):.4f}")
        loss_sum[0] = loss_dev.item()
        if not math.isfinite(loss_sum[0]):
            raise NonFiniteLoss(f"epoch {epoch + 1}: loss is {loss_sum[0]}; check the cache "
                                "(`stecache verify`) or lower --lr")  # fmt: skip
        bar.close()
        train_seconds = time.perf_counter() - t0
        last = epoch + 1 == cfg.epochs
        ahead = None if last else epoch_batches(train_split, cfg, epoch + 1, weights, device)
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        entry = {"epoch": epoch + 1, "loss": float(loss_sum[0] / loss_sum[1]), "lr": lr}
        if rank == 0:
            val = M.evaluate_probs(
                predict(head, val_split, multi, device=device), val_split.targets(multi), multi
            )
            entry |= {"val": M.summary(val)}
            score = M.selection_score(val, multi)  # mAP (threshold-free) or Acc@1
            if score > best and finite_weights(head):
                best, best_epoch = score, epoch + 1
                _save(head.state_dict(), out / "best.safetensors")
            entry |= {
                "seconds": time.perf_counter() - t0,
                "train_seconds": train_seconds,
                "data_wait_seconds": wait,
            }
            history.append(entry)
            cuda_rng = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
            rng = torch.get_rng_state()
            save_epoch(out, head, opt, rng, epoch, best, best_epoch, history, identity, cuda_rng)
            tb.log_epoch(out, entry)
            log.info("epoch %d: loss %.4f val %s %.2f", epoch + 1, entry["loss"], key, 100 * val[key])  # in %
    if rank != 0:
        torch.distributed.barrier()
        return {}
    metrics = finish(out, cfg, cache, val_split, best_epoch, history, device, keep_checkpoints)
    if world > 1:
        torch.distributed.barrier()
    return metrics


def _identity(record: dict) -> tuple:
    """(config, cache fingerprint) of a run record: what a resumed run must share with the folder's.
    `ram_limit` is left out: results do not depend on it (one batch order in RAM and streamed)."""
    fp = record.get("cache_fingerprint") or (record.get("cache") or {}).get("fingerprint")
    config = record.get("config")
    config = {k: v for k, v in config.items() if k != "ram_limit"} if isinstance(config, dict) else config
    return config, fp


def write_run_config(out: Path, cfg: TrainConfig, cache, failed: int, world: int = 1) -> None:
    """A run's config.json: its config, the cache (absolute path, fingerprint, attributes), failed clips."""
    out.mkdir(parents=True, exist_ok=True)
    url = cache.url if "://" in cache.url else str(Path(cache.url).resolve())  # evaluate from anywhere
    record = {"config": cfg.to_dict(), "cache_fingerprint": cache.fingerprint,
              "cache": {"url": url, "fingerprint": cache.fingerprint, "content": cache.content_digest()},
              "cache_attrs": cache.attrs,
              "failed_clips": failed, "world_size": world}  # fmt: skip
    _save(json.dumps(record, indent=2, default=str) + "\n", out / "config.json")


def restore(ckpt: Path, head, opt, identity: dict, cfg: TrainConfig, cuda: bool = False) -> tuple:
    """Validate the resume checkpoint `ckpt` (this run's, shapes of this head and optimiser, a consistent
    history), then load it into head and optimiser; (rng state, history, best, best_epoch, epoch), plus
    the CUDA rng state when `cuda`."""
    st = runio.load_state(ckpt, head, opt, {"run": fingerprint(_identity(identity))})
    m = st["meta"]
    epoch, hist, best, best_epoch = m.get("epoch"), m.get("history"), m.get("best"), m.get("best_epoch")
    ok = (
        isinstance(epoch, int) and 1 <= epoch <= cfg.epochs and isinstance(hist, list) and len(hist) == epoch
        and all(isinstance(h, dict) for h in hist) and isinstance(best, (int, float))
        and isinstance(best_epoch, int) and (best_epoch == -1 or 1 <= best_epoch <= epoch)
    )  # fmt: skip
    if not ok:
        raise runio._bad(ckpt, "its epoch, history or best epoch are inconsistent")
    if best_epoch > 0 and not (ckpt.parent / "best.safetensors").is_file():
        raise runio._bad(ckpt, "best.safetensors of its best epoch is missing")
    out = st["rng"], hist, float(best), best_epoch, epoch
    return (*out, st["cuda_rng"]) if cuda else out


def _resume_state(out: Path, identity: dict, resume: bool | None) -> Path | None:
    """The checkpoint to resume from, None to start over; refuses a folder holding a different run.
    Nothing is loaded here: restore() validates the checkpoint first."""
    ckpt, cfg_file = out / RESUME_FILE, out / "config.json"
    if resume is False or not cfg_file.exists():
        if resume:
            raise TrainError(f"--resume: {out} has no run to resume (no config.json)")
        return None
    try:
        old = json.loads(cfg_file.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainError(f"{cfg_file}: not a run config ({e}); use another --out or delete it") from None
    if _identity(old) != _identity(identity):
        new_cfg, old_cfg = _identity(identity)[0], _identity(old)[0]
        old_cfg = old_cfg if isinstance(old_cfg, dict) else {}
        diff = sorted(k for k in new_cfg if old_cfg.get(k) != new_cfg[k])
        what = f"config keys {diff}" if diff else "the cache"
        raise TrainError(f"{out} holds another run ({what} differ); use another --name/--out or delete it")
    if not ckpt.exists():
        if (out / "last.pt").exists():  # a pickle: never loaded
            log.warning("%s: last.pt of an older stecache is not loaded (pickle); starting over", out)
        if resume:
            raise TrainError(f"--resume: {out} has no checkpoint {RESUME_FILE}")
        return None
    return ckpt


def finish(out: Path, cfg: TrainConfig, cache, val_split, best_epoch: int, history: list, device,
           keep_checkpoints: bool = False) -> dict:  # fmt: skip
    """Evaluate the best weights on val and (once) on test; write metrics.json, the plot, results.jsonl.

    Flags a degenerate run (no label predicted, or one answer for every clip) in metrics and the record;
    then drops the resume checkpoint (`drop_resume_state`) unless keep_checkpoints."""
    multi = bool(cache.multi_label)
    if best_epoch < 1:
        what = M.main_metric(multi)
        raise TrainError(f"{out}: no epoch reached a finite val {what} with finite weights; nothing to test")
    head = make_head(cfg, cache).to(device)
    load_weights(head, out / "best.safetensors")
    val_probs = predict(head, val_split, multi, device=device)
    val = M.evaluate_probs(val_probs, val_split.targets(multi), multi)
    metrics = {"main_metric": M.main_metric(multi), "best_epoch": best_epoch, "epochs": cfg.epochs,
               "val_clips": len(val_split), "val": val}  # fmt: skip
    threshold = 0.5
    if multi and cfg.tune_threshold:
        threshold = M.tune_threshold(val_probs, val_split.targets(multi))
        metrics["threshold"] = threshold
        metrics["val_tuned"] = M.evaluate_probs(val_probs, val_split.targets(multi), multi, threshold)
    try:
        test_split = D.load_split(cache, "test", views=cfg.test_views, limit=cfg.ram_limit)
    except D.EmptySplit:
        test_split = None
        log.warning("cache %s has no test split: reporting val only", cache.url)
    if test_split is not None:
        test_probs = predict(head, test_split, multi, device=device)
        metrics["test_clips"] = len(test_split)
        metrics["test"] = M.evaluate_probs(test_probs, test_split.targets(multi), multi)
        if multi and cfg.tune_threshold:
            metrics["test_tuned"] = M.evaluate_probs(test_probs, test_split.targets(multi), multi, threshold)
    probs = test_probs if test_split is not None else val_probs
    metrics["degenerate"] = M.degenerate(probs, multi, threshold, cache.class_names)
    if metrics["degenerate"]:
        log.warning("run %s is degenerate: %s", out.name, metrics["degenerate"])
    _save(json.dumps(_finite(metrics), indent=2) + "\n", out / "metrics.json")
    M.plot_metrics(
        metrics.get("test_tuned") or metrics.get("test", val),  # multi-label: at the val-tuned threshold
        cache.class_names,
        multi,
        out / ("per_class_f1.png" if multi else "confusion.png"),
        split="test" if "test" in metrics else "val",
    )
    prov = cache.attrs.get("backbone", {})
    record = {
        "run": out.name, "run_dir": str(out), "head": cfg.head, "depth": cfg.depth, "seed": cfg.seed,
        "config": cfg.to_dict(), "cache": str(cache.url), "cache_fingerprint": cache.fingerprint,
        "backbone": prov.get("name") if isinstance(prov, dict) else prov,
        "dataset": cache.attrs.get("dataset"),
        "multi_label": multi, "best_epoch": best_epoch, "params": sum(p.numel() for p in head.parameters()),
        "seconds": sum(h.get("seconds", 0.0) for h in history),
        "val": M.summary(val), "test": M.summary(metrics.get("test", {})),
    }  # fmt: skip
    if "test_tuned" in metrics:
        record["test_tuned"] = M.summary(metrics["test_tuned"])
        record["val_tuned"] = M.summary(metrics["val_tuned"])
    record["degenerate"] = metrics["degenerate"]
    # one whole line, fsynced; re-running a finished run (same folder, config, cache) adds no second line
    key = ("run_dir", "config", "cache_fingerprint")
    same = lambda old: all(old.get(k) == record[k] for k in key)  # noqa: E731
    runio.append_record(out.parent / "results.jsonl", _finite(record), same)
    tb.close(out)
    if not keep_checkpoints:
        drop_resume_state(out)
    return metrics | {"run_dir": str(out)}


def drop_resume_state(out: Path) -> None:
    """Remove a finished run's resume checkpoint (optimiser state, RNG, history); weights and logs stay."""
    for name in RESUME_FILES:
        (out / name).unlink(missing_ok=True)


# ---- evaluation of a finished run --------------------------------------------------------------------


def read_run(run: str | Path) -> dict:
    """A run folder's config.json record, with `cache_attrs` (read from the cache if not stored)."""
    run = Path(run)
    cfg_file, weights = run / "config.json", run / "best.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise RunError(f"{run}: not a trained run (needs config.json and best.safetensors from train-head)")
    try:  # validated before anything else in the folder is read
        rec = json.loads(cfg_file.read_text())
        TrainConfig.from_dict(rec["config"])  # strict: unknown keys and bad values are errors
        if not (isinstance(rec["cache"]["url"], str) and isinstance(rec["cache"]["fingerprint"], str)):
            raise TypeError("cache url and fingerprint must be strings")
        attrs = rec.get("cache_attrs")
        if attrs and not (isinstance(attrs, dict) and isinstance(attrs.get("class_names"), list)
                          and isinstance(attrs.get("feature_shape"), list)):  # fmt: skip
            raise TypeError("cache_attrs needs class_names and feature_shape lists")
    except (ValueError, KeyError, TypeError, StecacheError) as e:
        raise RunError(f"{cfg_file}: not a run config ({type(e).__name__}: {str(e)[:150]})") from None
    if not rec.get("cache_attrs"):
        from .cache import open_cache

        rec["cache_attrs"] = open_cache(rec["cache"]["url"]).attrs
    return rec


def load_head(run: str | Path, rec: dict | None = None, device: str | torch.device = "cpu"):
    """The run's best head (built from its cache attributes), eval mode, frozen, on `device`."""
    from .heads import build_head

    rec = rec or read_run(run)
    cfg, attrs = TrainConfig.from_dict(rec["config"]), rec["cache_attrs"]
    head = build_head(
        cfg.head, tuple(attrs["feature_shape"]), len(attrs["class_names"]), cfg.depth, **cfg.head_options
    )
    load_weights(head, Path(run) / "best.safetensors")
    return head.requires_grad_(False).eval().to(device)


def load_weights(head, weights: Path) -> None:
    """Load safetensors weights (data only, never code) into `head`; RunError if damaged or another head's."""
    try:
        head.load_state_dict(load_file(str(weights)))  # shapes and names checked by torch
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever the parser says
        why = f"{type(e).__name__}: {str(e)[:120]}; delete the run to train it anew"
        raise RunError(f"{weights}: not this run's head weights ({why})") from None


def run_cache_url(run_dir: Path, rec: dict, cache: str | None = None) -> str:
    """`cache`, else the cache the run was trained on; RunError naming --cache when that one has moved."""
    url = cache or rec["cache"]["url"]
    if cache is None and "://" not in str(url) and not Path(url).exists():
        raise RunError(f"{url}: the cache run {run_dir} was trained on is not there; moved? pass --cache")
    return url


def open_run_cache(run_dir: Path, rec: dict, cache: str | None = None):
    """The cache run `run_dir` was trained on (or `cache`, a copy of it); CacheMismatch if another cache."""
    from .cache import attrs_diff, open_cache
    from .errors import CacheMismatch

    c = open_cache(run_cache_url(run_dir, rec, cache))
    if c.fingerprint != rec["cache"]["fingerprint"]:
        old = rec.get("cache_attrs", {})
        diff = [line.split(":")[0] for line in attrs_diff(old, c.attrs)]
        raise CacheMismatch(
            f"cache {c.url} (fingerprint {c.fingerprint}) is not the one run {run_dir} was trained on "
            f"({rec['cache']['fingerprint']}); differing attributes: {', '.join(diff) or 'unknown'}"
        )
    content = rec["cache"].get("content")  # the bytes too, not only the attributes (issue 14)
    if content and c.content_digest() not in (None, content):
        raise CacheMismatch(
            f"cache {c.url} has the attributes of run {run_dir}'s cache but other content (checksums "
            f"{c.content_digest()} vs {content}): it was re-extracted or repaired; use the original"
        )
    return c


def evaluate(run_dir: str | Path, split: str = "test", cache: str | None = None, device="cpu") -> dict:
    """Metrics of run `run_dir`'s best head on `split` of its cache (or of `cache`, same fingerprint)."""
    run_dir = Path(run_dir)
    rec = read_run(run_dir)
    cfg = TrainConfig.from_dict(rec["config"])
    c = open_run_cache(run_dir, rec, cache)
    head = load_head(run_dir, rec, device)
    multi = bool(c.multi_label)
    data = D.load_split(c, split, views=cfg.test_views, limit=cfg.ram_limit)
    probs = predict(head, data, multi, device=device)
    out = {"run": str(run_dir), "split": split, "clips": len(data), "class_names": c.class_names,
           "metrics": M.evaluate_probs(probs, data.targets(multi), multi)}  # fmt: skip
    if multi and "threshold" in (m := read_metrics(run_dir)):
        out["tuned"] = M.evaluate_probs(probs, data.targets(multi), multi, m["threshold"])
    return out


def read_metrics(run: str | Path) -> dict:
    """A run's metrics.json ({} when absent); RunError when not JSON or its threshold is not in [0, 1]."""
    path = Path(run) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text())
        t = m.get("threshold", 0.5)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise ValueError(f"threshold {t!r} is not in [0, 1]")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise RunError(f"{path}: not a run's metrics ({type(e).__name__}: {str(e)[:120]})") from None
    return m
