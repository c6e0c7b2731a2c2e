"""GPU proof and timings for stecache in one prepared process: `make bench-gpu` or `python -m bench.gpu`.

Correctness first (what only a GPU can show), then timings interleaved beside a matmul canary (bf16 on
CUDA): 1. backbones under bf16 autocast vs fp32 on the same clips (max-abs, cosine of the token maps, fp16
storage of the bf16 features); every head's forward/backward under autocast vs fp32, the fused STE form vs
the literal one; a 2-process `torchrun` extraction equal to a 1-process one; a 2-process DDP `train-head`
equal within 1e-4 (fp32 heads). 2. ViT-B extraction end to end (decoding workers -> GPU -> cache) vs the
forward alone on pre-decoded clips; an epoch of STE d1 / Tr d1 / meanFC from base-shape features in RAM,
streamed, and resident in GPU memory (data-wait share, clips/s ÷ what the canary allows); the Table I-III
sweep in one pass vs one run at a time. Results: gpu.json + gpu.md under --out (default $OUT, else
work/bench-gpu). --budget (default 480 s) is checked before every stage and between rounds: what does not
fit is skipped and recorded, so the run ends well inside 9 minutes. `--device cpu` runs everything small
(gloo, no autocast) — tests/test_gpu_bench.py does, so the script cannot rot. `--merge gpu.json` writes
the Markdown into BENCHMARKS.md here after a device run. Wheels for the device image: bench/README.md.
Stages live here (single-process checks), in gpu_dist.py (torchrun) and gpu_timing.py (timings).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
TITLE = "GPU: correctness under autocast and DDP, extraction and training timings (bench/gpu.py)"

SIZES = {  # per device type; the CPU sizes only keep the script alive in a test
    "cuda": dict(
        backbones=("videomaev2", "uniformerv2"),
        check_clips=4,
        head_shape=(8, 768, 14, 14),
        head_batch=8,
        distinct=32,
        extract_backbone="videomaev2",
        extract_clips=3000,
        rounds=2,
        train_clips=1024,
        classes=26,
        train_heads=(("ste", 1), ("tr", 1), ("meanfc", 0)),
        batch=32,
        stream_limit="256M",
    ),
    "cpu": dict(
        backbones=("videomaev2-tiny",),
        check_clips=2,
        head_shape=(4, 64, 4, 4),
        head_batch=4,
        distinct=6,
        extract_backbone="videomaev2-tiny",
        extract_clips=6,
        rounds=1,
        train_clips=40,
        classes=4,
        train_heads=(("ste", 1),),
        batch=8,
        stream_limit="1K",
    ),
}
# seconds a stage needs at least on CUDA; it is skipped when less is left (CPU sizes: a tenth)
NEEDS = {
    "backbones": 45,
    "heads": 20,
    "dist_extract": 60,
    "dist_train": 60,
    "extract": 90,
    "train": 90,
    "sweep": 60,
}


@dataclasses.dataclass
class Ctx:
    device: torch.device
    size: dict
    tmp: Path
    end: float
    synth: Path | None = None
    base_cache: Path | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.end - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def canary(ctx: Ctx) -> float:
    """Matmul TFLOP/s right now: bf16 8192³ on CUDA, fp32 512³ on CPU."""
    n, dt, reps = (8192, torch.bfloat16, 10) if ctx.cuda else (512, torch.float32, 3)
    a, b = torch.randn(n, n, device=ctx.device, dtype=dt), torch.randn(n, n, device=ctx.device, dtype=dt)
    a @ b
    ctx.sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    ctx.sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


@contextlib.contextmanager
def true_fp32():
    """fp32 references: no TF32 in matmuls or convolutions."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def synth(ctx: Ctx) -> Path:
    """A few synthetic videos (decoded for real), made once per run."""
    if ctx.synth is None:
        from stecache.synth import synthesize

        ctx.synth = ctx.tmp / "synth"
        synthesize(ctx.synth, n_clips=max(ctx.size["distinct"], 8))
    return ctx.synth


def _cos_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).min())


# ---- 1. correctness --------------------------------------------------------------------------------------


def stage_backbones(ctx: Ctx) -> dict:
    """Token maps under the production path (bf16 autocast on CUDA) vs true fp32, and their fp16 storage."""
    from stecache.annotations import load_dataset_dir
    from stecache.backbones import load
    from stecache.video import load_clip

    ds, out = load_dataset_dir(synth(ctx)), {}
    for name in ctx.size["backbones"]:
        bb = load(name, None, ctx.device)
        x = torch.cat(
            [
                load_clip(ds.root / c.path, bb.sampling, bb.preprocess)
                for c in ds.clips[: ctx.size["check_clips"]]
            ]
        )
        with torch.inference_mode(), true_fp32():
            ref = bb._tokens(x.to(ctx.device)).float()  # fp32, no autocast
        amp = bb(x)  # what extraction runs: bf16 autocast on CUDA
        stored = amp.half().float()  # the cache's fp16
        diff = (amp - ref).abs().max().item()
        r = {
            "autocast": ctx.cuda,
            "clips": len(x),
            "shape": list(ref.shape[1:]),
            "ref_max_abs": ref.abs().max().item(),
            "max_abs": diff,
            "rel": diff / max(ref.abs().max().item(), 1e-30),
            "cos_min": _cos_min(amp, ref),
            "fp16_finite": bool(torch.isfinite(stored).all()),
            "fp16_max_abs": (stored - amp).abs().max().item(),
            "fp16_vs_fp32_cos_min": _cos_min(stored, ref),
        }
        r["ok"] = r["cos_min"] >= 0.99 and r["fp16_finite"] and r["fp16_vs_fp32_cos_min"] >= 0.99
        out[name] = r
        del bb, x, ref, amp, stored
        if ctx.cuda:
            torch.cuda.empty_cache()
    return out


def stage_heads(ctx: Ctx) -> dict:
    """Every head: fwd + bwd under autocast vs fp32 (same weights, eval mode); fused STE vs literal."""
    from stecache.heads import HEADS, STEBlock, build_head

    shape, B, K = ctx.size["head_shape"], ctx.size["head_batch"], 26
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, *shape, generator=g).to(ctx.device)
    y = torch.randint(0, K, (B,), generator=g).to(ctx.device)

    def run(h):
        h.zero_grad(set_to_none=True)
        logits = h(x)
        F.cross_entropy(logits, y).backward()
        grads = torch.cat([p.grad.flatten().float() for p in h.parameters() if p.grad is not None])
        return logits.detach().float(), grads

    def compare(a, b) -> dict:
        (la, ga), (lb, gb) = a, b
        d = (la - lb).abs().max().item()
        return {
            "logits_max_abs": d,
            "logits_rel": d / max(lb.abs().max().item(), 1e-30),
            "grad_cos": float(F.cosine_similarity(ga.double(), gb.double(), dim=0)),
            "grad_rel": float((ga - gb).norm() / max(gb.norm().item(), 1e-30)),
        }

    out = {}
    for name, cls in HEADS.items():
        depth = 1 if 1 in cls.depths else cls.depths[0]
        torch.manual_seed(0)
        ref = build_head(name, shape, K, depth, autocast=False).to(ctx.device).eval()
        amp = copy.deepcopy(ref)
        amp.autocast = True
        with true_fp32():
            r32 = run(ref)
        r = compare(run(amp), r32) | {"depth": depth, "autocast": ctx.cuda}
        r["ok"] = r["grad_cos"] >= 0.99 and r["logits_rel"] <= 0.05
        out[f"{name} d{depth}"] = r
    torch.manual_seed(0)
    fused = build_head("ste", shape, K, 1, autocast=False).to(ctx.device).eval()
    literal = copy.deepcopy(fused)
    for m in literal.modules():
        if isinstance(m, STEBlock):
            m.fused = False
    with true_fp32():
        r = compare(run(fused), run(literal))
    out["ste d1 fused vs literal, fp32"] = r | {"ok": r["logits_rel"] <= 1e-4 and r["grad_rel"] <= 1e-4}
    fused.autocast = literal.autocast = True
    r = compare(run(fused), run(literal))
    out["ste d1 fused vs literal, autocast"] = r | {"ok": r["grad_cos"] >= 0.99}
    return out


# ---- driver -----------------------------------------------------------------------------------------------


def stages() -> dict:
    from bench import gpu_dist as D
    from bench import gpu_timing as G

    return {
        "backbones": stage_backbones,
        "heads": stage_heads,
        "dist_extract": D.stage_dist_extract,
        "dist_train": D.stage_dist_train,
        "extract": G.stage_extract,
        "train": G.stage_train,
        "sweep": G.stage_sweep,
    }


def run(
    device: str,
    out: Path,
    budget: float,
    only: list[str] | None = None,
    sizes: dict | None = None,
    synth_dir: Path | None = None,
) -> dict:
    """Every stage that fits in `budget` seconds; returns (and writes) the results."""
    t0 = time.monotonic()
    device = torch.device(device)
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    tmp = Path(tempfile.mkdtemp(prefix="stecache-gpu-"))
    unknown = sorted(set(sizes or {}) - set(SIZES[device.type]))
    if unknown:
        raise SystemExit(f"--set {unknown}: known sizes are {', '.join(SIZES[device.type])}")
    ctx = Ctx(device, {**SIZES[device.type], **(sizes or {})}, tmp, t0 + budget, synth=synth_dir)
    scale = 1.0 if ctx.cuda else 0.1
    res = {
        "device": torch.cuda.get_device_name(device) if ctx.cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if ctx.cuda else 0,
        "cpus": os.cpu_count(),
        "budget_s": budget,
        "sizes": ctx.size,
        "stages": {},
    }
    res["canary_tflops"] = canary(ctx)
    try:
        for name, fn in stages().items():
            if only and name not in only:
                continue
            if ctx.left() < NEEDS[name] * scale:
                res["stages"][name] = {"skipped": f"time budget: {ctx.left():.0f} s left"}
                continue
            t = time.monotonic()
            try:
                res["stages"][name] = fn(ctx)
            except Exception as e:  # one stage's failure is recorded; the others still run
                res["stages"][name] = {
                    "error": f"{type(e).__name__}: {e}"[-2000:],
                    "trace": traceback.format_exc()[-3000:],
                }
            res["stages"][name]["seconds"] = round(time.monotonic() - t, 1)
            print(f"[gpu] {name}: {time.monotonic() - t:.1f} s, {ctx.left():.0f} s left", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        res["seconds"] = round(time.monotonic() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps(res, indent=1, default=str))
        (out / "gpu.md").write_text(f"## {TITLE}\n\n{render(res)}\n")
    return res


def _f(v, digits=3) -> str:
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def render(res: dict) -> str:
    """The Markdown section of a result dict (also used by --merge)."""
    st = res["stages"]
    lines = [
        f"{res['device']}, torch {res['torch']} (CUDA {res['cuda']}), {res['gpus']} GPU(s), {res['cpus']} "
        f"CPUs; matmul canary {res['canary_tflops']:.3g} TFLOP/s ({'bf16' if res['gpus'] else 'fp32'}); "
        f"{res['seconds']} s of a {res['budget_s']:.0f} s budget.",
        "",
    ]
    for name, r in st.items():
        if "skipped" in r or "error" in r:
            lines.append(f"- **{name}**: {r.get('skipped') or 'ERROR ' + r['error'].splitlines()[0]}")
    for name in ("backbones", "heads"):
        rows = {k: v for k, v in st.get(name, {}).items() if isinstance(v, dict)}
        if rows:
            keys = [k for k in next(iter(rows.values())) if k not in ("ok", "shape")]
            lines += [
                "",
                f"**{name}** (autocast vs fp32)",
                "",
                "| | " + " | ".join(keys) + " | ok |",
                "|---" * (len(keys) + 2) + "|",
            ]
            lines += [
                f"| {k} | " + " | ".join(_f(v.get(c)) for c in keys) + f" | {v['ok']} |"
                for k, v in rows.items()
            ]
    for name in ("dist_extract", "dist_train"):
        r = st.get(name, {})
        if "ok" in r:
            lines.append(
                f"- **{name}** ({r['backend']}): "
                + ", ".join(f"{k} {_f(v)}" for k, v in r.items() if k not in ("backend", "seconds"))
            )
    from bench import gpu_timing as G

    lines += G.render(st)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "work/bench-gpu"))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for everything (default 480)")
    p.add_argument("--only", nargs="*", help=f"stages to run (default all: {', '.join(NEEDS)})")
    p.add_argument("--synth", type=Path, help="an existing `stecache synth` folder [default: make one]")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=JSON", help="override a size, e.g. extract_clips=500"
    )
    p.add_argument(
        "--merge", type=Path, help="write the section of this gpu.json into BENCHMARKS.md and stop"
    )
    a = p.parse_args(argv)
    if a.merge:
        from bench.common import write_section

        write_section(TITLE, render(json.loads(a.merge.read_text())))
        return 0
    sizes = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    res = run(a.device, a.out, a.budget, a.only, sizes, a.synth)
    print(render(res))
    bad = [k for k, v in res["stages"].items() if "error" in v]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
