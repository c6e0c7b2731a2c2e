"""Classifier heads over cached token maps: the paper's heads (core.py) and today's frozen-encoder probes
(probes.py), one registry `HEADS`, `build_head` with checked options and `describe` (parameters, GFLOP).

Every head maps features [B, n, c, h, w] to logits [B, K] and is built from the cache's feature shape:
`build_head("ste", feature_shape=(8, 768, 14, 14), num_classes=26, depth=1)`.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import HeadConfigError
from .core import (
    MAX_DEPTH,
    PATCH_TARGET,
    MeanFC,
    MeanFCHead,
    PatchClassifier,
    PatchHead,
    STEBlock,
    STEHead,
    STEMeanHead,
    TrBlock,
    TrHead,
    _Head,
    default_patch,
    drop_path,
    sincos_table,
)
from .probes import AttentiveHead, CrossAttentionBlock, EfficientProbe, EPHead, LinearHead, VJEPA2Head

__all__ = [
    "HEADS", "MAX_DEPTH", "PATCH_TARGET", "AttentiveHead", "CrossAttentionBlock", "EPHead", "EfficientProbe",
    "LinearHead", "MeanFC", "MeanFCHead", "PatchClassifier", "PatchHead", "STEBlock", "STEHead",
    "STEMeanHead", "TrBlock", "TrHead", "VJEPA2Head", "build_head", "default_patch", "describe",
    "describe_table", "drop_path", "sincos_table", "valid_depths",
]  # fmt: skip

HEADS: dict[str, type[_Head]] = {
    "meanfc": MeanFCHead,
    "tr": TrHead,
    "ste": STEHead,
    "stemean": STEMeanHead,
    "patch": PatchHead,
    "linear": LinearHead,
    "attentive": AttentiveHead,
    "vjepa2": VJEPA2Head,
    "ep": EPHead,
}


def valid_depths(name: str) -> range:
    """The depths head `name` accepts (meanfc/patch: 0 only; ste: 0–32; tr/stemean: 1–32)."""
    if name not in HEADS:
        raise HeadConfigError(f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}")
    return HEADS[name].depths


def build_head(name: str, feature_shape, num_classes: int, depth: int | None = None, **options) -> _Head:
    """Head `name` for features [B, n, c, h, w] of `feature_shape` = (n, c, h, w) and K = num_classes."""
    depths = valid_depths(name)
    cls = HEADS[name]
    depth = inspect.signature(cls).parameters["depth"].default if depth is None else depth
    if depth not in depths:
        raise HeadConfigError(f"head {name!r} takes depth {depths.start}..{depths.stop - 1}, not {depth}")
    shape = tuple(feature_shape)
    if len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise HeadConfigError(f"feature_shape must be 4 positive ints (n, c, h, w), not {feature_shape!r}")
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise HeadConfigError(f"num_classes must be a positive int, not {num_classes!r}")
    params = _parameters(cls)
    allowed = set(params) - {
        "feature_shape", "num_classes", "depth"
    }  # fmt: skip
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise HeadConfigError(f"head {name!r} has no option {unknown}; options: {', '.join(sorted(allowed))}")
    for key, value in options.items():
        _check_option(name, key, value, params[key].default)
    try:
        return cls(shape, num_classes, depth, **options)
    except (TypeError, ValueError) as e:  # a value of the right type that the module still rejects
        raise HeadConfigError(f"head {name!r}: bad option value in {options} ({e})") from None


def _parameters(cls) -> dict:
    """The keyword options of a head class: its own, plus its parent's where it forwards **options."""
    params = dict(inspect.signature(cls).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        params = _parameters(cls.__mro__[1]) | {
            k: p for k, p in params.items() if p.kind is not p.VAR_KEYWORD
        }
    return params


def _check_option(head: str, key: str, value, default) -> None:
    """Reject a head option whose type differs from its default's, or a rate outside [0, 1)."""
    bad = f"head {head!r} option {key}={value!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise HeadConfigError(f"{bad}: must be true or false")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HeadConfigError(f"{bad}: must be a number")
        if "drop" in key and not 0 <= value < 1:
            raise HeadConfigError(f"{bad}: a rate must be in [0, 1)")
        if "drop" not in key and value <= 0:
            raise HeadConfigError(f"{bad}: must be > 0")


def describe(feature_shape=(8, 768, 14, 14), num_classes: int = 26, depths=range(5)) -> list[dict]:
    """Parameter count and forward GFLOP per clip of every head × valid depth (built on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name in HEADS:
        for depth in (d for d in depths if d in valid_depths(name)):
            with torch.device("meta"):
                head = build_head(name, feature_shape, num_classes, depth).eval().requires_grad_(False)
                x = torch.empty(1, *feature_shape)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                head(x)
            params = sum(p.numel() for p in head.parameters())
            rows.append(dict(head=name, depth=depth, params=params, gflops=counter.get_total_flops() / 1e9))
    return rows


def describe_table(feature_shape=(8, 768, 14, 14), num_classes: int = 26, depths=range(5)) -> str:
    """`describe` as a markdown table: one row per head, parameters (fwd GFLOP/clip) per depth."""
    rows = describe(feature_shape, num_classes, depths)
    cell = {(r["head"], r["depth"]): f"{r['params']:,} ({r['gflops']:.3g})" for r in rows}
    lines = [
        f"features (n, c, h, w) = {tuple(feature_shape)}, K = {num_classes}: parameters (forward GFLOP/clip)",
        "",
        "| head | " + " | ".join(f"depth {d}" for d in depths) + " |",
        "|---|" + "---:|" * len(depths),
    ]
    lines += [f"| {h} | " + " | ".join(cell.get((h, d), "–") for d in depths) + " |" for h in HEADS]
    return "\n".join(lines)
