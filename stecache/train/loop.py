"""The training loop: `train` one head from a cache into a run folder, the paper's protocol (§III-B).

Each epoch: the (class-balanced) batch order, one optimiser step per global batch at `lr_at`'s rate, the
summed loss kept on the device (read back once an epoch; on CPU every step's loss is checked for NaN/inf,
on CUDA the epoch's, since a per-step check would sync), validation to pick the best epoch, and the resume
checkpoint; at the end `finish` tests the best epoch once. The next epoch's batches are read during
validation. Under torchrun, DDP: every rank takes every world-th clip of the same global batch, the loss
normalised by the global batch. Python: `train(TrainConfig(head="ste", depth=2), "work/cache.zarr")`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch

from .. import data as D
from .. import metrics as M
from .. import runio, tb
from ..errors import TrainError
from .checkpoint import (
    FINISHED_FILES,
    cuda_rng_state,
    keep_if_best,
    restore,
    resume_checkpoint,
    run_identity,
    save_epoch,
)
from .config import TrainConfig, lr_at
from .pieces import (
    check_classes,
    epoch_batches,
    epoch_loss,
    loss_fn,
    make_head,
    make_optimizer,
    non_finite_loss,
    predict,
)
from .runs import finish, read_metrics, run_name, write_run_config

log = logging.getLogger(__name__)


def _dist() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = os.environ.get("STECACHE_DIST_BACKEND")  # gloo: several ranks on one GPU (bench/gpu.py)
        torch.distributed.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


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

    from ..cache import open_cache

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
    check_classes(cache, train_split)
    D.make_resident(train_split, device, resident)
    val_split = D.load_split(cache, cfg.val_split, views=cfg.test_views, limit=limit)
    if world > 1 and cfg.batch_size % world:
        raise TrainError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")

    out = Path(out_dir) if out_dir else Path(runs_root) / run_name(cfg, cache)
    identity = run_identity(cfg, cache)  # what resume must match
    if rank == 0:
        stack.enter_context(runio.lock(out))  # one writer; cleans temp files of a killed run
    state = resume_checkpoint(out, identity, resume)
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
        loss_sum[0] = epoch_loss(loss_dev, epoch)  # one host sync an epoch; NonFiniteLoss if NaN/inf
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
            if keep_if_best(out, head, score, best):
                best, best_epoch = score, epoch + 1
            entry |= {
                "seconds": time.perf_counter() - t0,
                "train_seconds": train_seconds,
                "data_wait_seconds": wait,
            }
            history.append(entry)
            rng, cuda_rng = torch.get_rng_state(), cuda_rng_state(device)
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
