"""Export a trained run as one self-contained model: backbone + head (or the head alone), TorchScript or ONNX.

The model maps normalised clips [B, 3, T, H, W] (or, with head_only, features [B, n, c, h, w]) to logits
[B, K]. A JSON file beside it records what a user needs to run it without stecache: a machine-readable
`preprocess` section (decoding, the sampling rule and its parameters, resize, crop, mean/std in 0-255 units,
the test views to average over; also embedded in the model file), class names, softmax or sigmoid, the
multi-label threshold. `preprocess.py` beside it (numpy + PyAV, a copy of standalone_preprocess.py) turns a
video into the exact views `stecache predict` feeds the model. TorchScript loads with `torch.jit.load`; ONNX
with `onnxruntime` (extra `[onnx]`).
CLI: `stecache export RUN --format torchscript|onnx [--head-only] [--out FILE]`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import shutil
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


def preprocess_spec(pred: Predictor) -> dict:
    """Machine-readable preprocessing: video file -> the exact [V, 3, T, S, S] input (see preprocess.py)."""
    s, p = pred.sampling, pred.preprocess
    sampling = {"rule": s.rule, "clip_len": s.clip_len, "num_clips": s.num_clips, "test_mode": True}
    if s.rule == "dense":
        sampling |= {
            "frame_interval": s.frame_interval,
            "mmaction2": f"SampleFrames(clip_len={s.clip_len}, frame_interval={s.frame_interval}, "
            f"num_clips={s.num_clips}, test_mode=True)",
            "offsets": "clip_len > 1: max_offset = max(total - ((clip_len - 1) * frame_interval + 1), 0); "
            "num_clips > 1: round(k * max_offset / (num_clips - 1)), else max_offset // 2; "
            "clip_len == 1: k * total / num_clips + total / num_clips / 2",
            "indices": "(offset + j * frame_interval) mod total, truncated to int",
            "version_note": "mmaction2 1.x test-mode offsets (evenly spread over [0, max_offset]); "
            "0.x used segment centres and gives other frames",
        }
    else:
        sampling |= {
            "mmaction2": f"UniformSample(clip_len={s.clip_len}, num_clips={s.num_clips}, test_mode=True)",
            "indices": "seg = (total - 1) / clip_len; "
            "int(round(seg * j)) + int(seg / (num_clips + 1) * (k + 1))",
        }
    squash = p.crop == "resize"
    return {
        "version": 1,
        "reference": "preprocess.py (numpy + PyAV): load_views(video, load_spec(json)) -> [V, 3, T, S, S]",
        "decode": {
            "library": "PyAV",
            "stream": "first video stream, decoded from the start; frame i = i-th decoded frame",
            "pixels": "RGB uint8 (frame.to_rgb())",
            "frame_count": "the stream header's frame count, else the number of non-empty packets",
            "short_stream": "fewer frames decode than the header says: sample again from the decoded count",
            "size_changes": "frames whose size changes mid-stream are resized run by run",
        },
        "sampling": sampling,
        "resize": {
            "mode": "squash" if squash else "short_side",
            "short_side": None if squash else p.short_side,
            "size_rule": "(S, S)" if squash else "int(side * short_side / min(h, w) + 0.5)",
            "interpolation": "bilinear, half-pixel centres (align_corners=False), no antialias, float32",
        },
        "crop": {
            "kind": "none" if squash else p.crop,
            "size": p.crop_size,
            "offsets": "center: ((h - S) // 2, (w - S) // 2); three: along the long side at 0, "
            "2 * step, step with step = (long - S) // 2, the other axis centred",
        },
        "normalize": {"mean": list(p.mean), "std": list(p.std), "formula": "(x - mean) / std, 0-255, RGB"},
        "views": {
            "count": pred.num_views,
            "clips": s.num_clips,
            "crops": p.num_crops,
            "order": "crop-major: view = crop * clips + clip",
        },
        "layout": "float32 [V, 3, T, S, S] (views, RGB, frames, height, width)",
        "average": "mean over the views of softmax (single-label) or sigmoid (multi-label) of the logits",
    }


def constants(pred: Predictor, fmt: str, file: str, head_only: bool) -> dict:
    """Everything needed to feed and read the model without stecache, JSON-able."""
    from .train import read_run

    attrs = read_run(pred.run)["cache_attrs"]
    shape = (
        ["B", *attrs["feature_shape"]]
        if head_only
        else ["B", 3, pred.sampling.clip_len, *[pred.preprocess.crop_size] * 2]
    )
    return {
        "model": file,
        "format": fmt,
        "input": "features [B, n, c, h, w] float32 (the backbone's output for the views below)"
        if head_only
        else "normalised clips [B, 3, T, H, W] float32 RGB: the views preprocess.py makes",
        "input_name": "features" if head_only else "clips",
        "input_shape": shape,
        "output": "logits [B, K]",
        "probabilities": "sigmoid" if pred.multi_label else "softmax",
        "preprocess": preprocess_spec(pred),
        "sampling": pred.sampling.to_dict(),  # the stecache config objects, for stecache.video.load_clip
        "preprocess_config": pred.preprocess.to_dict(),
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
    """Write RUN's model as `fmt` to `out` (default RUN/export/model|head.pt|.onnx), its JSON and
    preprocess.py beside it; returns (model path, JSON path).

    The JSON's `preprocess` section is also embedded in the model file: TorchScript extra file
    `preprocess.json` (`torch.jit.load(f, _extra_files={"preprocess.json": ""})`), ONNX metadata_props
    key `preprocess`; the whole JSON likewise under `stecache.json` / `stecache`.
    """
    if fmt not in FORMATS:
        raise StecacheError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if pred is None:  # the head alone needs no backbone: no weights to rebuild, nothing to warn about
        pred = load_predictor(run, checkpoint, backbone=nn.Identity() if head_only else None)
    out = Path(out) if out else Path(run) / "export" / ("head" if head_only else "model")
    out = out.with_suffix(FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    model, x = model_of(pred, head_only), example_input(pred, head_only)
    info = constants(pred, fmt, out.name, head_only)
    if fmt == "onnx":
        _onnx(model, x, out, "features" if head_only else "clips", info)  # may fix info's batch size
    else:
        files = {"preprocess.json": json.dumps(info["preprocess"]), "stecache.json": json.dumps(info)}
        _torchscript(model, x).save(str(out), _extra_files=files)
    meta = out.with_suffix(".json")
    meta.write_text(json.dumps(info, indent=2) + "\n")
    shutil.copyfile(Path(__file__).with_name("standalone_preprocess.py"), out.parent / "preprocess.py")
    return out, meta


@contextlib.contextmanager
def quiet_third_party():
    """Silence library chatter that says nothing about the user's data.

    transformers logs a `ForCausalLMLoss` notice when tracing reads a model's attributes; the ONNX
    exporter logs one warning per torchvision operator it cannot register (torchvision is not used);
    torch.jit / torch.export emit deprecation and tracer warnings about our own code.
    """
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging

        hf_level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging = None
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if hf_logging is not None:
            hf_logging.set_verbosity(hf_level)


class PerClip(nn.Module):
    """Runs a model traced at batch 1 on each clip of a batch: [B, ...] -> [B, K]."""

    def __init__(self, one: torch.jit.ScriptModule):
        super().__init__()
        self.one = one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.one(x[i : i + 1]) for i in range(x.shape[0])])


def _torchscript(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace at batch 1 and check at batch len(x); if the trace baked the batch in, run it per clip."""
    with torch.no_grad(), quiet_third_party():  # torch.jit is deprecated, yet it is what loads anywhere
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


def _onnx(model: nn.Module, x: torch.Tensor, out: Path, name: str, info: dict | None = None) -> int | None:
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
    with torch.no_grad(), quiet_third_party():
        batch = torch.export.Dim("batch", min=1, max=4096)
        program, fixed = torch.onnx.export(model, (x,), dynamic_shapes=({0: batch},), **kw), None
        if isinstance(program.model.graph.inputs[0].shape[0], int):  # the exporter had to fix the batch
            program, fixed = torch.onnx.export(model, (x[:1],), **kw), 1
    if info is not None:  # the input shape records the fixed batch size
        info["input_shape"][0] = fixed or info["input_shape"][0]
        program.model.metadata_props["preprocess"] = json.dumps(info["preprocess"])
        program.model.metadata_props["stecache"] = json.dumps(info)
    program.save(str(out))
    return fixed
