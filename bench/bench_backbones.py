"""Seconds per clip of every backbone family's forward at base size on this CPU; fraction of matmul peak.

Runs (random weights: speed does not depend on the values) videomaev2, uniformerv2 at 8 and 16 frames,
the transformers video families through `hf:` (VideoMAE-B, TimeSformer-B, X-CLIP-B/32 vision, ViViT-B,
V-JEPA 2-L) and timm per-frame encoders (ViT-B/16, ResNet-50; skipped without timm), one clip per
forward, interleaved with the fp32 matmul canary in the same loop; the two heaviest (ViViT, V-JEPA 2) in
a second, single-round loop. FLOPs = torch's FlopCounterMode with SDPA swapped for its math form during
the count (the counter does not see CPU SDPA), so attention (4·L²·c) is included.
Run: `python -m bench backbones` (about 4-6 minutes on 2 shared cores).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleave, machine_line, median, write_section

NOTES = (
    "ViViT-B (32 frames, 3,136 tokens in one attention) and V-JEPA 2-L (the smallest released V-JEPA 2, "
    "at its 16-frame 256² protocol) take tens of seconds per clip on 2 shared cores, so they ran once: a "
    "GPU job in practice. This 2-core VM switches between speed levels ~3× apart and is shared with other "
    "jobs, so absolute times are noisy; the fraction of the matmul canary is the comparable number (above "
    "100% means the canary hit a slower moment than the model). What limits it: the non-matmul work "
    "(LayerNorm, GELU, softmax inside SDPA, reshapes, patch-embedding convs; for ResNet-50 the "
    "convolutions themselves) runs below matmul peak."
)


def _math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention as plain matmuls, so FlopCounterMode counts q.k^T and attn.v."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    a = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        a = a.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else a + attn_mask
    return a.softmax(-1) @ v


def clip_flops(model) -> int:
    """Forward FLOPs per clip (token map only, as `backbone(clips)` runs); also warms the model up."""
    x = torch.randn(1, 3, model.frames, model.size, model.size)
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _math_sdpa
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        F.scaled_dot_product_attention = sdpa
    return counter.get_total_flops()


def _hf(config_cls: str, model_cls: str, **kw):
    """A base-size transformers video model (random init) wrapped as an hf: backbone."""
    import transformers

    from stecache.backbones.hfvideo import HFVideoEncoder

    def make():
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw)).eval()
        with tempfile.TemporaryDirectory() as d:  # no preprocessor json: ImageNet defaults
            return HFVideoEncoder(model, f"hf:{model_cls}", None, Path(d)).freeze("cpu")

    return make


def _timm(name: str):
    def make():
        from stecache.backbones.timmenc import TimmEncoder

        return TimmEncoder(name, 8).freeze("cpu")

    return make


def entries() -> tuple[dict, dict]:
    """(light, heavy): label -> constructor of each family's base-size backbone."""
    from stecache.backbones import load

    light = {
        "videomaev2 B/16 T=16": lambda: load("videomaev2"),
        "uniformerv2 B/16 T=8": lambda: load("uniformerv2"),
        "uniformerv2 B/16 T=16": lambda: load("uniformerv2", frames=16),
        "hf VideoMAE-B T=16": _hf("VideoMAEConfig", "VideoMAEModel"),
        "hf TimeSformer-B T=8": _hf("TimesformerConfig", "TimesformerModel"),
        "hf X-CLIP-B/32 vision T=8": _hf("XCLIPVisionConfig", "XCLIPVisionModel"),
    }
    try:
        import timm  # noqa: F401

        light |= {
            "timm vit_base_patch16_224 T=8": _timm("vit_base_patch16_224"),
            "timm resnet50 T=8": _timm("resnet50"),
        }
    except Exception:  # noqa: BLE001 - timm is optional (and needs a torchvision that fits torch)
        pass
    heavy = {
        "hf ViViT-B T=32": _hf("VivitConfig", "VivitModel"),
        "hf V-JEPA 2-L T=16 256²": _hf("VJEPA2Config", "VJEPA2Model", frames_per_clip=16),
    }
    return light, heavy


def _time(makers: dict, rounds: int) -> tuple[dict, dict, float, list]:
    """Build, count FLOPs (= warm-up), then time the group interleaved with the canary."""
    models = {k: make() for k, make in makers.items()}
    flops = {k: clip_flops(m) for k, m in models.items()}
    x = {k: torch.randn(1, 3, m.frames, m.size, m.size) for k, m in models.items()}
    times = interleave({k: (lambda m=m, x=x[k]: m(x)) for k, m in models.items()}, rounds=rounds, warmup=0)
    canaries = times.pop("_canary_gflops")
    return times, flops, median(canaries), canaries


def main(rounds: int = 2) -> dict:
    """Time every family at base size (interleaved) and the tiny entries; write the BENCHMARKS.md section."""
    from stecache.backbones import load

    torch.set_num_threads(2)
    light, heavy = entries()
    with warnings.catch_warnings():  # random weights are intended here
        warnings.simplefilter("ignore")
        groups = [_time(light, rounds), _time(heavy, 1)]
        tiny = {n: load(n) for n in ("videomaev2-tiny", "uniformerv2-tiny")}
    tiny_x = {n: torch.randn(4, 3, m.frames, m.size, m.size) for n, m in tiny.items()}
    tiny_fns = {n: (lambda m=m, x=tiny_x[n]: m(x)) for n, m in tiny.items()}
    tiny_times = interleave(tiny_fns, rounds=20, warmup=2)

    rows = [
        "| backbone (1 clip) | s/clip (median) | spread | GFLOP/clip | GFLOP/s | fraction of matmul |",
        "|---|---|---|---|---|---|",
    ]
    result = {}
    for times, flops, canary, _ in groups:
        for key, ts in times.items():
            per_clip, gflops = median(ts), flops[key] / 1e9
            rate = gflops / per_clip
            spread = f"{(max(ts) - min(ts)) / per_clip:.0%}" if len(ts) > 1 else "1 round"
            cells = [key, f"{per_clip:.2f}", spread, f"{gflops:.1f}", f"{rate:.0f}", f"{rate / canary:.0%}"]
            rows.append("| " + " | ".join(cells) + " |")
            result[key] = {"s_per_clip": per_clip, "gflop": gflops, "fraction": rate / canary}
    for name, ts in tiny_times.items():
        if not name.startswith("_"):
            rows.append(f"| {name} (batch 4) | {median(ts) / 4 * 1e3:.2f} ms | | | | |")
    u8, u16 = result["uniformerv2 B/16 T=8"], result["uniformerv2 B/16 T=16"]
    result["uniformer_16_vs_8"] = {
        "time": u16["s_per_clip"] / u8["s_per_clip"],
        "flops": u16["gflop"] / u8["gflop"],
    }
    ratio = result["uniformer_16_vs_8"]
    cans = "; ".join(f"{c:.0f} GFLOP/s (rounds: {', '.join(f'{x:.0f}' for x in cs)})" for *_, c, cs in groups)
    timm_note = "" if any(k.startswith("timm") for k in result) else " No timm here: its rows are absent."
    body = "\n".join(rows) + (
        f"\n\nUniFormerV2 16 vs 8 frames: {ratio['time']:.2f}× the time per clip, {ratio['flops']:.2f}× the "
        "FLOPs (the weights do not depend on T; every local and global block sees twice the tokens).\n\n"
        f"fp32 1024³ matmul canary in the same loops (light group, {rounds} rounds; heavy group, 1 round): "
        f"{cans}. FLOPs are counted on the forward that also serves as warm-up. {machine_line()}; CPU fp32 "
        "with SDPA attention. " + NOTES + timm_note
    )
    write_section("Backbones: forward on CPU", body)
    return result


if __name__ == "__main__":
    main()
