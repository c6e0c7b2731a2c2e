"""The multi-process checks of bench/gpu.py: a 2-process `torchrun` extraction equal to a 1-process one,
a 2-process DDP `train-head` within 1e-4 of one process. NCCL on 2+ GPUs; on one GPU both ranks share it
and talk over gloo (NCCL refuses two ranks on one device); on CPU, gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.gpu import ROOT, Ctx, synth


def _cli(ctx: Ctx) -> Path:
    """A script running the stecache CLI from this checkout (the device image does not install it)."""
    path = ctx.tmp / "stecache_cli.py"
    path.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom stecache.cli import cli\n"
        "cli(prog_name='stecache')\n"
    )
    return path


def _dist_env(ctx: Ctx) -> tuple[dict, list[str], str]:
    """(environment, device arguments, backend) for 2 ranks: NCCL on 2+ GPUs, else gloo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if not ctx.cuda:
        return env | {"CUDA_VISIBLE_DEVICES": ""}, ["--device", "cpu"], "gloo (CPU)"
    if torch.cuda.device_count() >= 2:
        return env, [], "nccl"
    # NCCL refuses two ranks on one GPU: both ranks on cuda:0, collectives over gloo
    return env | {"STECACHE_DIST_BACKEND": "gloo"}, ["--device", "cuda:0"], "gloo, both ranks on 1 GPU"


def _sh(cmd: list, ctx: Ctx, env: dict, cwd: Path) -> None:
    res = subprocess.run(
        list(map(str, cmd)),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=max(10.0, ctx.left() - 5),
    )
    if res.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:8]))} ... exit {res.returncode}: {res.stderr[-1500:]}")


def _torchrun(n: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", n, "--master_port", 29531]


def stage_dist_extract(ctx: Ctx) -> dict:
    """2-process torchrun extraction vs 1 process, same forced batch: rows equal."""
    import numpy as np

    from stecache.cache import open_cache

    env, dev, backend = _dist_env(ctx)
    args = [
        "extract",
        "--backbone",
        "videomaev2-tiny",
        "--data",
        synth(ctx),
        "--shard-size",
        4,
        "--batch-size",
        4,
        "--workers",
        1,
        *dev,
    ]
    _sh([sys.executable, _cli(ctx), *args, "--cache", "one.zarr"], ctx, env, ctx.tmp)
    _sh([*_torchrun(2), _cli(ctx), *args, "--cache", "two.zarr"], ctx, env, ctx.tmp)
    a, b = open_cache(ctx.tmp / "one.zarr"), open_cache(ctx.tmp / "two.zarr")
    fa, fb = a.read(np.arange(len(a))).astype(np.float32), b.read(np.arange(len(b))).astype(np.float32)
    d = float(np.abs(fa - fb).max())
    return {
        "backend": backend,
        "clips": len(a),
        "all_done": bool(a.done.all() and b.done.all()),
        "bit_equal": bool((fa == fb).all()),
        "max_abs": d,
        "ok": bool(a.done.all() and b.done.all()) and d <= 1e-3 * float(np.abs(fa).max()),
    }


def stage_dist_train(ctx: Ctx) -> dict:
    """2-process DDP train-head vs 1 process (fp32 head: autocast off), weights within 1e-4."""
    from safetensors.torch import load_file

    from stecache.data import toy_cache

    env, dev, backend = _dist_env(ctx)
    toy = ctx.tmp / "toy.zarr"
    if not toy.exists():
        toy_cache(str(toy), n_clips=200, num_views=2, signal=1.5)
    args = [
        "train-head",
        "--head",
        "ste",
        "--depth",
        1,
        "--cache",
        toy,
        "--epochs",
        2,
        "--batch-size",
        16,
        "--lr",
        0.05,
        "--option",
        "autocast=false",
    ]
    _sh([sys.executable, _cli(ctx), *args, "--out", "ddp1"], ctx, env, ctx.tmp)
    _sh([*_torchrun(2), _cli(ctx), *args, "--out", "ddp2"], ctx, env, ctx.tmp)
    w1, w2 = (load_file(str(ctx.tmp / d / "last.safetensors")) for d in ("ddp1", "ddp2"))
    d = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    losses = [
        [json.loads(x)["loss"] for x in (ctx.tmp / d / "log.jsonl").read_text().splitlines()]
        for d in ("ddp1", "ddp2")
    ]
    return {"backend": backend, "weights_max_abs": d, "losses": losses, "ok": d <= 1e-4}
