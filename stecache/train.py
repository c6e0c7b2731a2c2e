"""Stage two: train one classifier head from a feature cache with the paper's protocol (§III-B).

AdamW (decay 0.05 on weights, none on biases/norms), lr 1e-3 per 256 clips scaled with the global batch,
linear warm-up for min(warmup_epochs, epochs // 5) epochs then cosine to 0, per step; BCE-with-logits
(multi-label) or cross-entropy. Validation every epoch picks the best epoch (macro-F1 at 0.5 or Acc@1);
test is evaluated once with it. A killed run resumes bit-identically from its last epoch. Under torchrun,
DDP: every rank takes every world-th clip of the same global batch, loss normalised by the global batch.
Python: `train(TrainConfig(head="ste", depth=2), "work/cache.zarr")`; CLI: `stecache train-head`.
"""

from __future__ import annotations

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
from .config import Config, fingerprint
from .errors import RunError, TrainError

log = logging.getLogger(__name__)


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

    def __post_init__(self):
        for key, ok in (("train_views", ("all", "first")), ("test_views", ("test", "first"))):
            if getattr(self, key) not in ok:
                raise TrainError(f"{key} must be one of {', '.join(ok)}, not {getattr(self, key)!r}")
        for key in ("epochs", "batch_size", "warmup_epochs", "seed"):
            if not isinstance(getattr(self, key), int) or isinstance(getattr(self, key), bool):
                raise TrainError(f"{key} must be an integer, not {getattr(self, key)!r}")
        if self.data_seed is not None and (
            not isinstance(self.data_seed, int) or isinstance(self.data_seed, bool)
        ):
            raise TrainError(f"data_seed must be an integer or None, not {self.data_seed!r}")
        for key in ("lr", "weight_decay"):
            if not isinstance(getattr(self, key), (int, float)) or isinstance(getattr(self, key), bool):
                raise TrainError(f"{key} must be a number, not {getattr(self, key)!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be ≥ 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise TrainError(
                f"lr ({self.lr}) must be > 0, weight_decay ({self.weight_decay}) and "
                f"warmup_epochs ({self.warmup_epochs}) ≥ 0"
            )

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


def save_epoch(out: Path, head, opt, rng, epoch: int, best: float, best_epoch: int, history: list) -> None:
    """What a run folder holds after each epoch: last weights, the resume checkpoint, the log."""
    _save(head.state_dict(), out / "last.safetensors")
    ckpt = dict(head=head.state_dict(), optimizer=opt.state_dict(), rng=rng, epoch=epoch + 1, best=best,
                best_epoch=best_epoch, history=history)  # fmt: skip
    _save(ckpt, out / "last.pt")
    _save("".join(json.dumps(h) + "\n" for h in history), out / "log.jsonl")


def _finite(obj):
    """NaN (an undefined metric, e.g. AP of a class without positives) → None, for strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return [_finite(v) for v in obj] if isinstance(obj, list) else obj


def _save(obj, path: Path) -> None:
    """Write atomically: a kill leaves either the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(tmp))
    elif path.suffix == ".pt":
        torch.save(obj, tmp)
    else:
        tmp.write_text(obj)
    os.replace(tmp, path)


def run_name(cfg: TrainConfig, cache) -> str:
    """Default run folder name: head, depth, seed and a hash of the config and the cache."""
    h = fingerprint({"config": cfg.to_dict(), "cache": cache.fingerprint})[:8]
    return f"{cfg.head}-d{cfg.depth if cfg.depth is not None else 'x'}-s{cfg.seed}-{h}"


def _check_classes(cache, train: D.SplitData) -> None:
    counts = train.labels.sum(0)
    missing = [cache.class_names[k] for k in np.flatnonzero(counts == 0)]
    if missing:
        raise TrainError(
            f"cache {cache.url}: class(es) {', '.join(missing)} have no training clips; "
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
    resident: str = "auto",
) -> dict:
    """Train `cfg` on the cache at `cache_url` into `out_dir` (default runs_root/run_name); metrics dict.

    resume=None: resume when the folder holds a checkpoint of the same config and cache; True: must
    resume; False: start over. resident: keep the training split's features in device memory
    (data.make_resident: "auto" = on CUDA when it fits, "on", "off"); results do not depend on it.
    """
    from tqdm import tqdm

    from .cache import open_cache

    rank, world = _dist()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else "cpu"
    cache = open_cache(cache_url)
    failed = D.check_complete(cache)
    head = make_head(cfg, cache).to(device)  # unknown head / bad depth / patch fail here
    cfg = cfg.replace(depth=head.depth)
    multi = bool(cache.multi_label)
    limit = cfg.ram_limit
    train_split = D.load_split(cache, "train", views=cfg.train_views, limit=limit)
    _check_classes(cache, train_split)
    D.make_resident(train_split, device, resident)
    val_split = D.load_split(cache, "val", views=cfg.test_views, limit=limit)
    if world > 1 and cfg.batch_size % world:
        raise TrainError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")

    out = Path(out_dir) if out_dir else Path(runs_root) / run_name(cfg, cache)
    identity = {"config": cfg.to_dict(), "cache_fingerprint": cache.fingerprint}  # what resume must match
    state = _resume_state(out, identity, resume)
    if rank == 0:
        write_run_config(out, cfg, cache, failed, world)

    targets = torch.from_numpy(train_split.targets(multi)).to(device)  # moved once
    weights = D.sample_weights(train_split.labels) if cfg.balanced else None
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    opt = make_optimizer(head, cfg)
    history, best, best_epoch, start = [], -math.inf, -1, 0
    if state is not None:
        rng, history, best, best_epoch, start = restore(state, head, opt)
        torch.set_rng_state(rng)
        log.info("resuming %s after epoch %d of %d", out, start, cfg.epochs)
    model = torch.nn.parallel.DistributedDataParallel(head) if world > 1 else head
    key = M.main_metric(multi)

    for epoch in range(start, cfg.epochs):
        t0, wait, loss_sum = time.perf_counter(), 0.0, torch.zeros(2, dtype=torch.float64)
        loss_dev = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync a step
        it = epoch_batches(train_split, cfg, epoch, weights, device)
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
        bar.close()
        train_seconds = time.perf_counter() - t0
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        entry = {"epoch": epoch + 1, "loss": float(loss_sum[0] / loss_sum[1]), "lr": lr}
        if rank == 0:
            val = M.evaluate_probs(
                predict(head, val_split, multi, device=device), val_split.targets(multi), multi
            )
            entry |= {"val": M.summary(val)}
            if val[key] > best:
                best, best_epoch = val[key], epoch + 1
                _save(head.state_dict(), out / "best.safetensors")
            entry |= {
                "seconds": time.perf_counter() - t0,
                "train_seconds": train_seconds,
                "data_wait_seconds": wait,
            }
            history.append(entry)
            save_epoch(out, head, opt, torch.get_rng_state(), epoch, best, best_epoch, history)
            log.info("epoch %d: loss %.4f val %s %.4f", epoch + 1, entry["loss"], key, val[key])
    if rank != 0:
        torch.distributed.barrier()
        return {}
    metrics = finish(out, cfg, cache, val_split, best_epoch, history, device)
    if world > 1:
        torch.distributed.barrier()
    return metrics


def _identity(record: dict) -> tuple:
    """(config, cache fingerprint) of a run record: what a resumed run must share with the folder's."""
    fp = record.get("cache_fingerprint") or (record.get("cache") or {}).get("fingerprint")
    return record.get("config"), fp


def write_run_config(out: Path, cfg: TrainConfig, cache, failed: int, world: int = 1) -> None:
    """A run's config.json: its config, the cache (absolute path, fingerprint, attributes), failed clips."""
    out.mkdir(parents=True, exist_ok=True)
    url = cache.url if "://" in cache.url else str(Path(cache.url).resolve())  # evaluate from anywhere
    record = {"config": cfg.to_dict(), "cache_fingerprint": cache.fingerprint,
              "cache": {"url": url, "fingerprint": cache.fingerprint}, "cache_attrs": cache.attrs,
              "failed_clips": failed, "world_size": world}  # fmt: skip
    _save(json.dumps(record, indent=2, default=str) + "\n", out / "config.json")


def restore(state: dict, head, opt) -> tuple:
    """Load a resume checkpoint into head and optimiser; (rng state, history, best, best_epoch, epoch)."""
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["optimizer"])
    return state["rng"], state["history"], state["best"], state["best_epoch"], state["epoch"]


def _resume_state(out: Path, identity: dict, resume: bool | None) -> dict | None:
    """The checkpoint to resume from, None to start over; refuses a folder holding a different run."""
    ckpt, cfg_file = out / "last.pt", out / "config.json"
    if resume is False or not cfg_file.exists():
        if resume:
            raise TrainError(f"--resume: {out} has no run to resume (no config.json)")
        return None
    old = json.loads(cfg_file.read_text())
    if _identity(old) != _identity(identity):
        diff = sorted(k for k in identity["config"] if old.get("config", {}).get(k) != identity["config"][k])
        what = f"config keys {diff}" if diff else "the cache"
        raise TrainError(f"{out} holds another run ({what} differ); use another --name/--out or delete it")
    if not ckpt.exists():
        if resume:
            raise TrainError(f"--resume: {out} has no checkpoint last.pt")
        return None
    return torch.load(ckpt, weights_only=False, map_location="cpu")


def finish(out: Path, cfg: TrainConfig, cache, val_split, best_epoch: int, history: list, device) -> dict:
    """Evaluate the best weights on val and (once) on test; write metrics.json, the plot, results.jsonl."""
    multi = bool(cache.multi_label)
    head = make_head(cfg, cache).to(device)
    head.load_state_dict(load_file(str(out / "best.safetensors")))
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
    _save(json.dumps(_finite(metrics), indent=2) + "\n", out / "metrics.json")
    M.plot_metrics(
        metrics.get("test", val),
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
    results = out.parent / "results.jsonl"
    if not _recorded(results, record):  # re-running a finished run adds no second line
        with open(results, "a") as f:
            f.write(json.dumps(_finite(record), default=str) + "\n")
    return metrics | {"run_dir": str(out)}


def _recorded(results: Path, record: dict) -> bool:
    """Whether results.jsonl already holds this run (same folder, config and cache fingerprint)."""
    if not results.exists():
        return False
    key = ("run_dir", "config", "cache_fingerprint")
    for line in results.read_text().splitlines():
        try:
            old = json.loads(line)
        except ValueError:
            continue
        if all(old.get(k) == record[k] for k in key):
            return True
    return False


# ---- evaluation of a finished run --------------------------------------------------------------------


def read_run(run: str | Path) -> dict:
    """A run folder's config.json record, with `cache_attrs` (read from the cache if not stored)."""
    run = Path(run)
    cfg_file, weights = run / "config.json", run / "best.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise RunError(f"{run}: not a trained run (needs config.json and best.safetensors from train-head)")
    try:
        rec = json.loads(cfg_file.read_text())
        rec["config"], rec["cache"]  # noqa: B018 - the keys every run has
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RunError(f"{cfg_file}: not a run config ({type(e).__name__}: {e})") from None
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
    head.load_state_dict(load_file(str(Path(run) / "best.safetensors")))
    return head.requires_grad_(False).eval().to(device)


def evaluate(run_dir: str | Path, split: str = "test", cache: str | None = None) -> dict:
    """Metrics of run `run_dir`'s best head on `split` of its cache (or of `cache`, same fingerprint)."""
    from .cache import attrs_diff, open_cache
    from .errors import CacheMismatch

    run_dir = Path(run_dir)
    rec = read_run(run_dir)
    cfg = TrainConfig.from_dict(rec["config"])
    c = open_cache(cache or rec["cache"]["url"])
    if c.fingerprint != rec["cache"]["fingerprint"]:
        old = rec.get("cache_attrs", {})
        diff = [line.split(":")[0] for line in attrs_diff(old, c.attrs)]
        raise CacheMismatch(
            f"cache {c.url} (fingerprint {c.fingerprint}) is not the one run {run_dir} was trained on "
            f"({rec['cache']['fingerprint']}); differing attributes: {', '.join(diff) or 'unknown'}"
        )
    head = load_head(run_dir, rec)
    multi = bool(c.multi_label)
    data = D.load_split(c, split, views=cfg.test_views, limit=cfg.ram_limit)
    probs = predict(head, data, multi)
    out = {"run": str(run_dir), "split": split, "clips": len(data), "class_names": c.class_names,
           "metrics": M.evaluate_probs(probs, data.targets(multi), multi)}  # fmt: skip
    saved = run_dir / "metrics.json"
    if multi and saved.exists() and "threshold" in (m := json.loads(saved.read_text())):
        out["tuned"] = M.evaluate_probs(probs, data.targets(multi), multi, m["threshold"])
    return out
