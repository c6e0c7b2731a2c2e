"""Export a trained run as one self-contained model: backbone + head (or the head alone), TorchScript or ONNX.

The model maps normalised clips [B, 3, T, H, W] (or, with head_only, features [B, n, c, h, w]) to logits
[B, K]. A JSON file beside it records what a user needs to run it without stecache: frame sampling, resize,
crop, mean/std (0-255 units), the test views to average over, class names, softmax or sigmoid, the
multi-label threshold. TorchScript loads with `torch.jit.load`; ONNX with `onnxruntime` (extra `[onnx]`).
CLI: `stecache export RUN --format torchscript|onnx [--head-only] [--out FILE]`.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import StecacheError
from .predict import Predictor, load_predictor

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


class EndToEnd(nn.Module):
    """Backbone + head: normalised clips [B, 3, T, H, W] -> logits [B, K]."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(clips))  # [B, n, c, h, w] -> [B, K]


def example_input(pred: Predictor, head_only: bool, batch: int = 2) -> torch.Tensor:
    """A random input of the exported model's shape."""
    g = torch.Generator().manual_seed(0)
    if head_only:
        n, c, h, w = _feature_shape(pred)
        return torch.randn(batch, n, c, h, w, generator=g)
    s = pred.preprocess.crop_size
    return torch.randn(batch, 3, pred.sampling.clip_len, s, s, generator=g)


def _feature_shape(pred: Predictor) -> tuple[int, int, int, int]:
    from .train import read_run

    return tuple(read_run(pred.run)["cache_attrs"]["feature_shape"])


def model_of(pred: Predictor, head_only: bool) -> nn.Module:
    """The module to export: the head alone, or backbone + head."""
    return pred.head if head_only else EndToEnd(pred.backbone, pred.head).eval()


def constants(pred: Predictor, fmt: str, file: str, head_only: bool) -> dict:
    """Everything needed to feed and read the model without stecache, JSON-able."""
    from .train import read_run

    attrs = read_run(pred.run)["cache_attrs"]
    clips, crops = pred.sampling.num_clips, pred.preprocess.num_crops
    shape = (
        ["B", *attrs["feature_shape"]]
        if head_only
        else ["B", 3, pred.sampling.clip_len, *[pred.preprocess.crop_size] * 2]
    )
    return {
        "model": file,
        "format": fmt,
        "input": "features [B, n, c, h, w] float32"
        if head_only
        else "normalised clips [B, 3, T, H, W] float32 RGB",
        "input_name": "features" if head_only else "clips",
        "input_shape": shape,
        "output": "logits [B, K]",
        "probabilities": "sigmoid" if pred.multi_label else "softmax",
        "average": f"mean of the probabilities over a video's {pred.num_views} view(s), mmaction2 'prob'",
        "views": {
            "count": pred.num_views,
            "clips": clips,
            "crops": crops,
            "order": "crop-major: crop*clips+clip",
        },
        "sampling": pred.sampling.to_dict(),
        "sampling_rule": (
            "dense = mmaction2 SampleFrames(clip_len, frame_interval, num_clips, test_mode)"
            if pred.sampling.rule == "dense"
            else "uniform = mmaction2 UniformSample(clip_len, num_clips, test_mode)"
        ),
        "preprocess": pred.preprocess.to_dict(),
        "preprocess_steps": (
            "resize the short side to short_side (bilinear); crop crop_size (center | three along the long "
            "side: left/top, right/bottom, middle | resize = squash); (x - mean) / std per RGB channel, 0-255"
        ),
        "class_names": list(pred.class_names),
        "multi_label": pred.multi_label,
        "threshold": pred.threshold,
        "backbone": {k: attrs["backbone"].get(k) for k in ("name", "weights", "checkpoint", "feature_layer")},
        "head_only": head_only,
        "run": str(pred.run),
        "stecache_version": __version__,
    }


def export(
    run: str | Path,
    fmt: str = "torchscript",
    out: str | Path | None = None,
    head_only: bool = False,
    checkpoint: str | Path | None = None,
    pred: Predictor | None = None,
) -> tuple[Path, Path]:
    """Write RUN's model as `fmt` to `out` (default RUN/export/model|head.pt|.onnx) + its JSON; both paths."""
    if fmt not in FORMATS:
        raise StecacheError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    pred = pred or load_predictor(run, checkpoint)
    out = Path(out) if out else Path(run) / "export" / ("head" if head_only else "model")
    out = out.with_suffix(FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    model, x = model_of(pred, head_only), example_input(pred, head_only)
    if fmt == "torchscript":
        _torchscript(model, x).save(str(out))
    fixed = _onnx(model, x, out, "features" if head_only else "clips") if fmt == "onnx" else None
    meta = out.with_suffix(".json")
    info = constants(pred, fmt, out.name, head_only)
    if fixed:
        info["input_shape"][0] = fixed  # this model takes exactly `fixed` clips per call
    meta.write_text(json.dumps(info, indent=2) + "\n")
    return out, meta


class PerClip(nn.Module):
    """Runs a model traced at batch 1 on each clip of a batch: [B, ...] -> [B, K]."""

    def __init__(self, one: torch.jit.ScriptModule):
        super().__init__()
        self.one = one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.one(x[i : i + 1]) for i in range(x.shape[0])])


def _torchscript(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace at batch 1 and check at batch len(x); if the trace baked the batch in, run it per clip."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, yet it is what loads anywhere
        traced = torch.jit.trace(model, x[:1], check_trace=False)
        try:
            ok = torch.allclose(traced(x), model(x), rtol=1e-4, atol=1e-5)
        except RuntimeError:  # e.g. a reshape that recorded the traced batch size as a constant
            ok = False
        return traced if ok else torch.jit.script(PerClip(traced))


def _bake_merged_kernels(model: nn.Module) -> nn.Module:
    """A copy whose fused STE blocks return their merged temporal kernel as a constant.

    The fused block builds that kernel every forward with an in-place add on a diagonal view, which the
    ONNX exporter cannot turn into a functional graph; the weights are frozen, so the kernel is a constant.
    """
    model = copy.deepcopy(model)
    for m in model.modules():
        if getattr(m, "fused", False) and hasattr(m, "merged_kernel"):
            with torch.no_grad():
                weight, bias = m.merged_kernel(m.fold_identity)
            m.merged_kernel = functools.partial(_constant_kernel, weight.clone(), bias.clone())
    return model


def _constant_kernel(weight: torch.Tensor, bias: torch.Tensor, fold_identity: bool):
    return weight, bias


def _onnx(model: nn.Module, x: torch.Tensor, out: Path, name: str) -> int | None:
    """torch.onnx.export (dynamo), weights in the one file; the fixed batch size, or None if it is dynamic.

    A model whose code specialises the batch size (e.g. `len(x)` in a reshape) is exported for batch 1.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise StecacheError("ONNX export needs the onnx extra: pip install 'stecache[onnx]'") from None
    model = _bake_merged_kernels(model)
    kw = dict(input_names=[name], output_names=["logits"], dynamo=True, external_data=False, verbose=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        program, fixed = torch.onnx.export(model, (x,), dynamic_shapes=({0: batch},), **kw), None
        if isinstance(program.model.graph.inputs[0].shape[0], int):  # the exporter had to fix the batch
            program, fixed = torch.onnx.export(model, (x[:1],), **kw), 1
    program.save(str(out))
    return fixed
