"""The timing stages of bench/gpu.py: extraction end to end vs forward only, a training epoch per data
path (RAM, streamed, GPU-resident), the Table I-III sweep in one pass vs one run at a time. Every timed
variant runs interleaved with the others and beside the matmul canary; ratios come from the same round."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time

import torch

from bench.gpu import Ctx, canary, synth

MODES = ("ram", "stream", "resident")


def _median(xs):
    return statistics.median(xs) if xs else None


def stage_extract(ctx: Ctx) -> dict:
    """ViT-B (CPU: tiny) `extract()` with decoding workers vs the forward alone on pre-decoded clips."""
    from stecache.annotations import Clip, load_dataset_dir
    from stecache.backbones import load
    from stecache.extract import ExtractConfig, extract
    from stecache.video import load_clip

    s = ctx.size
    bb = load(s["extract_backbone"], None, ctx.device)
    ds0 = load_dataset_dir(synth(ctx))
    distinct = ds0.clips[: s["distinct"]]
    n = s["extract_clips"]
    clips = tuple(Clip(distinct[i % len(distinct)].path, (0,), "train", f"c{i}") for i in range(n))
    ds = dataclasses.replace(ds0, clips=clips)  # distinct videos reused: decoding is real every time
    x = torch.cat([load_clip(ds0.root / c.path, bb.sampling, bb.preprocess) for c in distinct])
    cfg = ExtractConfig(progress=False)  # workers and batch: the defaults (cpus - 2 on GPU; measured)
    url = ctx.tmp / "vitb.zarr"

    def stecache() -> dict:
        shutil.rmtree(url, ignore_errors=True)
        summary = extract(ds, url, bb, cfg=cfg)
        shutil.rmtree(url, ignore_errors=True)
        return summary

    first = stecache()  # warm-up (kernels, cudnn) and the batch the chooser picks on this device
    b = first["batch"]["batch_size"]
    pool = x.repeat(-(-b // len(x)), 1, 1, 1, 1)[: max(b, len(x))]  # [>= b, 3, T, H, W]
    pool = pool.pin_memory() if ctx.cuda else pool

    def forward_only() -> None:
        with torch.inference_mode():
            for i in range(0, n, b):
                bb(pool[: min(b, n - i)].to(ctx.device, non_blocking=True))
        ctx.sync()

    times = {"canary": [], "forward": [], "stecache": []}
    for r in range(s["rounds"]):
        if r and ctx.left() < 2.5 * (times["forward"][-1] + times["stecache"][-1]) + 10:
            break
        times["canary"].append(canary(ctx))
        for name, fn in (("forward", forward_only), ("stecache", stecache)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ratio = _median([f / e for f, e in zip(times["forward"], times["stecache"], strict=True)])
    return {
        "backbone": s["extract_backbone"],
        "clips": n,
        "distinct_videos": len(distinct),
        "workers": "default",
        "batch": first["batch"],
        "rounds": len(times["forward"]),
        "forward_clips_s": n / _median(times["forward"]),
        "stecache_clips_s": n / _median(times["stecache"]),
        "stecache_over_forward": ratio,
        "target": 0.85,
        "ok": ratio >= 0.85,
        "canary_tflops": times["canary"],
    }


def _flops_per_clip(name: str, depth: int, shape, k: int, device) -> float:
    """Forward + backward FLOPs of one clip through the head (FlopCounterMode, batch 2, fp32)."""
    from torch.utils.flop_counter import FlopCounterMode

    from stecache.heads import build_head

    h = build_head(name, shape, k, depth, autocast=False).to(device)
    x = torch.randn(2, *shape, device=device)
    with FlopCounterMode(display=False) as fc:
        h(x).sum().backward()
    return fc.get_total_flops() / 2


def _base_cache(ctx: Ctx):
    """A cache of base-shape random features (CPU: tiny shape), 26 classes, made once per run."""
    from stecache.data import toy_cache

    if ctx.base_cache is None:
        ctx.base_cache = ctx.tmp / "base.zarr"
        toy_cache(
            str(ctx.base_cache),
            n_clips=ctx.size["train_clips"],
            num_classes=ctx.size["classes"],
            feature_shape=ctx.size["head_shape"],
            signal=1.0,
        )
    return ctx.base_cache


def stage_train(ctx: Ctx) -> dict:
    """One training epoch (the second of two: the first warms up) per head and data path, via train()."""
    from stecache import train as T
    from stecache.cache import open_cache

    url = _base_cache(ctx)
    n_train = len(open_cache(url).rows("train"))
    out, times = {}, {}
    for r in range(ctx.size["rounds"]):
        for name, depth in ctx.size["train_heads"]:
            if ctx.left() < 20:
                break
            c = canary(ctx)
            for mode in MODES:
                cfg = T.TrainConfig(
                    head=name,
                    depth=depth,
                    epochs=2,
                    batch_size=ctx.size["batch"],
                    lr=1e-3,
                    warmup_epochs=0,
                    ram_limit=ctx.size["stream_limit"] if mode == "stream" else None,
                )
                run = ctx.tmp / f"run-{name}-{mode}-{r}"
                T.train(cfg, str(url), run, progress=False, resident="on" if mode == "resident" else "off")
                e = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
                times.setdefault((name, depth, mode), []).append(
                    (e["train_seconds"], e["data_wait_seconds"], c)
                )
                shutil.rmtree(run, ignore_errors=True)
    for (name, depth, mode), ts in times.items():
        flops = _flops_per_clip(name, depth, ctx.size["head_shape"], ctx.size["classes"], ctx.device)
        sec, wait, can = (_median([t[i] for t in ts]) for i in range(3))
        allowed = can * 1e12 / flops if flops else None
        out[f"{name} d{depth} {mode}"] = {
            "clips_s": n_train / sec,
            "data_wait_share": wait / sec,
            "gflop_per_clip": flops / 1e9,
            "canary_allowed_clips_s": allowed,
            "of_allowed": (n_train / sec) / allowed if allowed else None,
            "rounds": len(ts),
        }
    return {"train_clips": n_train, "batch": ctx.size["batch"], "runs": out}


def stage_sweep(ctx: Ctx) -> dict:
    """Tables I-III (one epoch each) in one pass over the data vs one run at a time (same device)."""
    from stecache import sweep as S

    url = _base_cache(ctx)
    base = {"epochs": 1, "batch_size": ctx.size["batch"], "lr": 1e-3, "warmup_epochs": 0}
    jobs = S.plan([str(url)], tables="I,II,III", base=base)
    quiet = lambda *a, **k: None  # noqa: E731
    t = time.perf_counter()
    S.run_sweep(jobs, ctx.tmp / "sweep-one", device=str(ctx.device), progress=False, echo=quiet)
    one = time.perf_counter() - t
    seq, done = 0.0, 0
    for i, j in enumerate(jobs):
        if ctx.left() < 15:
            break
        t = time.perf_counter()
        S.run_sweep([j], ctx.tmp / f"sweep-seq{i}", device=str(ctx.device), progress=False, echo=quiet)
        seq += time.perf_counter() - t
        done += 1
    full = seq * len(jobs) / done if done else None
    return {
        "heads": len(jobs),
        "one_pass_s": one,
        "sequential_s": full,
        "sequential_runs_timed": done,
        "speedup": full / one if full else None,
    }


def _g(v) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def render(st: dict) -> list[str]:
    """Markdown lines of the timing stages."""
    lines = []
    e = st.get("extract", {})
    if "ok" in e:
        lines += [
            "",
            f"**Extraction** ({e['backbone']}, {e['clips']} clips from {e['distinct_videos']} videos, "
            f"batch {e['batch']['batch_size']} ({e['batch']['chosen']}), {e['rounds']} round(s)): forward "
            f"only {e['forward_clips_s']:.4g} clips/s, stecache end to end {e['stecache_clips_s']:.4g} "
            f"clips/s, ratio **{e['stecache_over_forward']:.2f}** (target ≥ 0.85); batch timings "
            f"(ms/view): {e['batch']['per_view_ms']}.",
        ]
    t = st.get("train", {})
    if "runs" in t:
        lines += [
            "",
            f"**Training epoch** ({t['train_clips']} clips, batch {t['batch']}; epoch 2 of 2):",
            "",
            "| head | data | clips/s | data-wait share | GFLOP/clip (fwd+bwd) | canary-allowed clips/s | "
            "of allowed |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, r in t["runs"].items():
            head, mode = k.rsplit(" ", 1)
            lines.append(
                f"| {head} | {mode} | {_g(r['clips_s'])} | {_g(r['data_wait_share'])} | "
                f"{_g(r['gflop_per_clip'])} | {_g(r['canary_allowed_clips_s'])} | {_g(r['of_allowed'])} |"
            )
    s = st.get("sweep", {})
    if "one_pass_s" in s:
        lines += [
            "",
            f"**Sweep** Tables I–III ({s['heads']} heads, 1 epoch): one pass {s['one_pass_s']:.1f} s, "
            f"one run at a time {_g(s['sequential_s'])} s ({s['sequential_runs_timed']} timed), "
            f"speed-up **{_g(s['speedup'])}×**.",
        ]
    return lines
