"""Seconds per clip of the base backbones' forward on this CPU, their FLOPs, and fraction of matmul peak.

Runs videomaev2 and uniformerv2 (random weights: speed does not depend on the values) at batch 1 and 4,
interleaved A B C D A B C D with the fp32 matmul canary in the same loop, plus the tiny variants.
FLOPs = matmuls/convs counted by torch's FlopCounterMode + attention (q.k and attn.v) added analytically,
because the counter does not see CPU SDPA. Run: `python -m bench backbones` (about 1-3 minutes).
"""

from __future__ import annotations

import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleave, machine_line, median, write_section


def attention_flops(model) -> int:
    """q.k^T and attn.v FLOPs of one clip (4 * L^2 * c per attention over L tokens)."""
    cfg = model.config
    n, h, w = model.grid
    if cfg["family"] == "videomaev2":
        return cfg["depth"] * 4 * (n * h * w) ** 2 * cfg["width"]
    return cfg["layers"] * n * 4 * (1 + h * w) ** 2 * cfg["width"]  # per frame, over 1 + h*w tokens


def clip_flops(model) -> int:
    """Forward FLOPs per clip (token map only, as `backbone(clips)` runs)."""
    x = torch.randn(1, 3, model.frames, model.size, model.size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() + attention_flops(model)


def main(rounds: int = 2, names=("videomaev2", "uniformerv2"), batches=(1, 4)) -> dict:
    """Time the base backbones (interleaved) and the tiny ones; write the BENCHMARKS.md section."""
    from stecache.backbones import load

    torch.set_num_threads(2)
    with warnings.catch_warnings():  # random weights are intended here
        warnings.simplefilter("ignore")
        models = {name: load(name) for name in names}
        tiny = {n + "-tiny": load(n + "-tiny") for n in names}
    flops = {name: clip_flops(m) for name, m in models.items()}
    inputs = {b: {n: torch.randn(b, 3, m.frames, m.size, m.size) for n, m in models.items()} for b in batches}
    for name, m in models.items():  # warm-up at batch 1 only (batch 4 is long)
        m(inputs[batches[0]][name])
    variants = {f"{n} B={b}": (lambda m=m, x=inputs[b][n]: m(x)) for b in batches for n, m in models.items()}
    times = interleave(variants, rounds=rounds, warmup=0)
    canary = median(times["_canary_gflops"])

    tiny_x = {n: torch.randn(4, 3, m.frames, m.size, m.size) for n, m in tiny.items()}
    tiny_times = interleave(
        {n: (lambda m=m, x=tiny_x[n]: m(x)) for n, m in tiny.items()}, rounds=20, warmup=2
    )

    rows = [
        "| backbone | batch | s/clip (median) | spread | GFLOP/clip | GFLOP/s | fraction of matmul |",
        "|---|---|---|---|---|---|---|",
    ]
    result = {"canary_gflops": canary}
    for key, ts in times.items():
        if key.startswith("_"):
            continue
        name, b = key.split(" B=")
        per_clip = median(ts) / int(b)
        gflops = flops[name] / 1e9
        rate = gflops / per_clip
        spread = (max(ts) - min(ts)) / median(ts)
        cells = [
            name,
            b,
            f"{per_clip:.3f}",
            f"{spread:.0%}",
            f"{gflops:.1f}",
            f"{rate:.0f}",
            f"{rate / canary:.0%}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
        result[key] = {"s_per_clip": per_clip, "gflop": gflops, "fraction": rate / canary}
    for name, ts in tiny_times.items():
        if not name.startswith("_"):
            rows.append(f"| {name} | 4 | {median(ts) / 4 * 1e3:.2f} ms | | | | |")
            result[name] = {"s_per_clip": median(ts) / 4}
    canaries = ", ".join(f"{c:.0f}" for c in times["_canary_gflops"])
    body = "\n".join(rows) + (
        f"\n\nfp32 1024³ matmul canary in the same loop: median {canary:.0f} GFLOP/s (rounds: {canaries}); "
        f"{rounds} interleaved rounds after a batch-1 warm-up; {machine_line()}; random weights (speed does "
        "not depend on values); CPU fp32 with SDPA attention. FLOPs = FlopCounterMode (matmuls, convs) + "
        "attention 4·L²·c added analytically. This 2-core VM switches between two speed levels ~3× apart and "
        "is shared with other jobs, so absolute times are noisy; the fraction of the matmul canary is the "
        "comparable number (above 100% means the short canary hit a slower moment than the model). What "
        "limits the fraction: the non-matmul work (LayerNorm, GELU/QuickGELU, softmax inside SDPA, "
        "reshapes, the patch-embedding conv) is memory-bound and runs far below peak."
    )
    write_section("Backbones: forward on CPU", body)
    return result


if __name__ == "__main__":
    main()
