"""Heads benchmark: forward and forward+backward ms/clip of every head at depth 1, base and tiny shapes.

Base = the ViT-B cache (c=768, 8×14×14, K=26); tiny = the `-tiny` backbones' cache (c=64, 4×4×4).
Also the STE speed tricks one by one (plain → merged temporal taps → + identity folded into the kernel →
+ channels_last_3d; the default `ste` takes the layout measured fastest on its device), interleaved in
the same rounds, with per-round speed-ups over plain. GFLOP/clip are counted with FlopCounterMode on the
meta device; "% mm" is achieved GFLOP/s over the fp32 matmul canary of the same rounds. fwd+bwd =
forward + cross-entropy + backward (no optimiser).
Run: `python -m bench heads` (~1 min on 2 idle cores; several times that on a shared machine).
`python -m bench probes` times only the probe heads of Table I+ beside Tr d1 and STE d1 (fwd+bwd, base shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleave, machine_line, median, write_section
from stecache.heads import HEADS, build_head, valid_depths

SHAPES = {"base": ((8, 768, 14, 14), 26), "tiny": ((4, 64, 4, 4), 26)}
STE_VARIANTS = {  # cumulative tricks; the last one is the default `ste`
    "plain": dict(fused=False, channels_last=False),
    "merged taps": dict(fused=True, fold_identity=False, channels_last=False),
    "+ identity folded": dict(fused=True, fold_identity=True, channels_last=False),
    "+ channels_last_3d": dict(channels_last=True),
    "default (device's fastest)": dict(),
}


def _cases() -> dict[str, tuple[str, dict]]:
    """label -> (head name, options): each head at depth 1 (0 if it has none) and the STE variants."""
    cases = {f"ste · {v}": ("ste", o) for v, o in STE_VARIANTS.items()}
    cases.update({name: (name, {}) for name in HEADS if name != "ste"})
    return cases


def _depth(name: str) -> int:
    return 1 if 1 in valid_depths(name) else valid_depths(name)[0]  # vjepa2: its preset's 4


def gflops(name: str, shape, K: int, options: dict, backward: bool, depth: int | None = None) -> float:
    """GFLOP per clip of one forward (+ cross-entropy backward), counted on the meta device."""
    with torch.device("meta"):
        head = build_head(name, shape, K, _depth(name) if depth is None else depth, **options)
        x, y = torch.empty(1, *shape), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        if backward:
            F.cross_entropy(head(x), y).backward()
        else:
            with torch.no_grad():
                head(x)
    return counter.get_total_flops() / 1e9


def run_shape(label: str, shape, K: int, batch: int, rounds: int) -> tuple[list[str], dict]:
    """Interleaved timings of every case on one shape; returns markdown rows and the raw times."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, *shape), torch.arange(batch) % K
    fns, heads = {}, {}
    for case, (name, opts) in _cases().items():
        head = heads[case] = build_head(name, shape, K, _depth(name), **opts).train()

        def fwd(head=head):
            with torch.no_grad():
                head(x)

        def train(head=head):
            head.zero_grad(set_to_none=True)
            F.cross_entropy(head(x), y).backward()

        fns[f"{case}|fwd"], fns[f"{case}|train"] = fwd, train
    flops = {(c, b): gflops(n, shape, K, o, b) for c, (n, o) in _cases().items() for b in (False, True)}
    times = interleave(fns, rounds=rounds, warmup=1)
    canary = median(times["_canary_gflops"])
    rows = []
    for case, (name, _) in _cases().items():
        params = sum(p.numel() for p in heads[case].parameters())
        cells = [label, case, f"{params:,}"]
        for mode, backward in (("fwd", False), ("train", True)):
            g = flops[case, backward]
            ms = median(times[f"{case}|{mode}"]) / batch * 1e3
            rate = g / (ms / 1e3)
            cells += [f"{g:.3g}", f"{ms:.3g}", f"{rate:.0f} ({100 * rate / canary:.0f}%)"]
            if name == "ste":
                plain = times[f"ste · plain|{mode}"]
                ratios = [p / t for p, t in zip(plain, times[f"{case}|{mode}"], strict=True)]
                cells.append(f"{median(ratios):.2f}×")
            else:
                cells.append("")
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(f"| {label} | matmul canary | | | | {canary:.0f} GFLOP/s (median) | | | | | |")
    return rows, times


def main(batch: int = 1, rounds: int = 3, tiny_batch: int = 64, tiny_rounds: int = 9) -> None:
    """Base shape at `batch` clips × `rounds`, tiny at `tiny_batch` × `tiny_rounds`; writes BENCHMARKS.md."""
    torch.set_num_threads(2)
    header = [
        "| shape | head (depth 1) | params | fwd GFLOP/clip | fwd ms/clip | fwd GFLOP/s (% mm) "
        "| fwd speed-up | fwd+bwd GFLOP/clip | fwd+bwd ms/clip | fwd+bwd GFLOP/s (% mm) | fwd+bwd speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_rows, _ = run_shape("base", *SHAPES["base"], batch=batch, rounds=rounds)
    tiny_rows, _ = run_shape("tiny", *SHAPES["tiny"], batch=tiny_batch, rounds=tiny_rounds)
    body = "\n".join(
        [
            f"Heads at depth 1 (meanfc/patch: 0). base = c 768, 8×14×14, K 26, batch {batch}, {rounds} "
            f"interleaved rounds; tiny = c 64, 4×4×4, K 26, batch {tiny_batch}, {tiny_rounds} rounds. "
            f"Medians; speed-ups are medians of per-round ratios against `ste · plain` (same round, so "
            f"machine phase changes cancel). {machine_line()}. The CPU is shared with other jobs, so "
            "absolute times are noisy; compare within a row block and against the canary.",
            "",
            *header,
            *base_rows,
            *tiny_rows,
            "",
            "`ste · plain` is eq. 1–3 as written (three temporal convs, 15 taps, identity added twice); "
            "`merged taps` builds one 7-tap kernel from the three parameter tensors each forward; "
            "`+ identity folded` adds 2·I to its centre tap (no extra elementwise pass); "
            "`+ channels_last_3d` keeps the map [B, n, h, w, c] in memory so SE reshapes and the MLP "
            "permutes are views. Tests prove every variant equal to plain (fp32, 1e-5 relative).",
        ]
    )
    write_section("Heads", body)


# the probes of Table I+ beside the paper's heads: (label, head, depth)
PROBES = (("meanfc", "meanfc", 0), ("linear", "linear", 0), ("ep", "ep", 0), ("attentive d1", "attentive", 1),
          ("vjepa2 (d4, 16 heads)", "vjepa2", 4), ("tr d1", "tr", 1), ("ste d1", "ste", 1))  # fmt: skip


def probes(batch: int = 1, rounds: int = 3, device: str = "cpu") -> None:
    """fwd+bwd (training step without the optimiser) per clip of each probe head at the base cache shape,
    beside Tr d1 and STE d1; GFLOP/s over the matmul canary; writes the `Probe heads` section."""
    (shape, K), dev = SHAPES["base"], torch.device(device)
    torch.manual_seed(0)
    x, y = torch.randn(batch, *shape, device=dev), torch.arange(batch, device=dev) % K
    fns, params = {}, {}
    for label, name, depth in PROBES:
        head = build_head(name, shape, K, depth).train().to(dev)
        params[label] = sum(p.numel() for p in head.parameters())

        def step(head=head):
            head.zero_grad(set_to_none=True)
            F.cross_entropy(head(x), y).backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        fns[label] = step
    flops = {label: gflops(name, shape, K, {}, True, depth) for label, name, depth in PROBES}
    times = interleave(fns, rounds=rounds, warmup=1)
    canary = median(times["_canary_gflops"])
    ste = times["ste d1"]
    rows = ["| head | params | fwd+bwd GFLOP/clip | ms/clip | GFLOP/s | ÷ canary | time ÷ STE d1 |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label, _, _ in PROBES:
        ms = median(times[label]) / batch * 1e3
        rate = flops[label] / (ms / 1e3)
        ratio = median([a / b for a, b in zip(times[label], ste, strict=True)])
        rows.append(f"| {label} | {params[label]:,} | {flops[label]:.3g} | {ms:.3g} | {rate:.0f} | "
                    f"{rate / canary:.2f} | {ratio:.3f} |")  # fmt: skip
    write_section(
        "Probe heads (Table I+) at the base cache shape",
        f"fwd+bwd (forward, cross-entropy, backward; no optimiser) per clip at c 768, 8×14×14, K 26, batch "
        f"{batch}, {rounds} interleaved rounds on {device}; medians; matmul canary (CPU fp32) "
        f"{canary:.0f} GFLOP/s in the same rounds. {machine_line()}. `time ÷ STE d1` is the median of "
        "per-round ratios.\n\n" + "\n".join(rows),
    )


if __name__ == "__main__":
    main()
