"""Reference preprocessing of an exported stecache model: video -> float32 [V, 3, T, H, W], numpy + PyAV.

`stecache export` copies this file verbatim as `preprocess.py` next to the model; it imports neither
stecache nor torch, and reads its numbers from the `preprocess` section of the model's JSON (the same
section is embedded in the ONNX / TorchScript file). It reproduces `stecache predict` to 1e-6:
decode with PyAV (RGB, first video stream, stop after the last needed frame), mmaction2 test-mode frame
sampling (`SampleFrames` "dense" or `UniformSample` "uniform"), short-side bilinear resize with half-pixel
centres and no antialiasing in float32 (as torch.nn.functional.interpolate), center / three / squash
crop, (x - mean) / std in 0-255 units, views crop-major (view = crop * num_clips + clip).
Usage:  python preprocess.py VIDEO [--spec model.json] [--out views.npy] [--classify]
        from preprocess import load_spec, load_views; x = load_views("a.mp4", load_spec("model.json"))
`--classify` also runs the model beside the spec (torch.jit or onnxruntime, whichever the JSON names)
and prints the class probabilities averaged over the views (softmax, or sigmoid for multi-label).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np

SPEC_VERSION = 1


def load_spec(path: str | Path) -> dict:
    """The `preprocess` section of an exported model's JSON (model.json / head.json)."""
    return json.loads(Path(path).read_text())["preprocess"]


# ---- sampling: which frames ------------------------------------------------------------------------------


def dense_indices(total: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """mmaction2 SampleFrames(test_mode=True) frame indices [num_clips, clip_len]; out-of-range wraps."""
    if clip_len == 1:  # mmaction2's 2D branch: the middle frame of each of num_clips segments
        avg = total / float(num_clips)
        offsets = np.arange(num_clips) * avg + avg / 2.0
    else:
        max_offset = max(total - ((clip_len - 1) * frame_interval + 1), 0)
        if num_clips > 1:
            offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
        else:
            offsets = np.array([max_offset // 2])
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(inds, total).astype(np.int64)


def uniform_indices(total: int, clip_len: int, num_clips: int) -> np.ndarray:
    """mmaction2 UniformSample(test_mode=True) frame indices [num_clips, clip_len]."""
    seg = float(total - 1) / clip_len
    starts = np.array([int(np.round(seg * i)) for i in range(clip_len)])
    duration = seg / (num_clips + 1)
    inds = np.stack([starts + int(duration * (k + 1)) for k in range(num_clips)])
    return np.minimum(inds, total - 1).astype(np.int64)


def frame_indices(sampling: dict, total: int) -> np.ndarray:
    """Indices [num_clips, clip_len] of the spec's sampling rule for a video of `total` frames."""
    s = sampling
    if s["rule"] == "dense":
        return dense_indices(total, s["clip_len"], s["frame_interval"], s["num_clips"])
    if s["rule"] == "uniform":
        return uniform_indices(total, s["clip_len"], s["num_clips"])
    raise ValueError(f"unknown sampling rule {s['rule']!r}")


# ---- decoding --------------------------------------------------------------------------------------------


def count_frames(path: str | Path) -> int:
    """Frames of the first video stream: the header count, else the number of non-empty packets."""
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        n = stream.frames
        if n <= 0:
            n = sum(1 for p in container.demux(stream) if p.size)
    if n <= 0:
        raise ValueError(f"{path}: the video stream has no frames")
    return n


def decode(path: str | Path, indices: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """({index: uint8 RGB [H, W, 3]} of the distinct indices, frames decoded); stops after the last one."""
    needed = set(np.asarray(indices).reshape(-1).tolist())
    last, got, i = max(needed), {}, -1
    with av.open(str(path), metadata_errors="ignore") as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in needed:
                got[i] = frame.to_rgb().to_ndarray()
            if i >= last:
                break
    return got, i + 1


def sampled_frames(path: str | Path, spec: dict) -> list[np.ndarray]:
    """uint8 RGB frames, num_clips * clip_len of [H, W, 3], in sampling order.

    A stream that decodes to fewer frames than its header says (a header that over-counts, a file cut
    short) is sampled again from the frames that do decode.
    """
    total = count_frames(path)
    inds = frame_indices(spec["sampling"], total).reshape(-1)
    got, decoded = decode(path, inds)
    if decoded <= inds.max():
        if decoded == 0:
            raise ValueError(f"{path}: no frame decodes")
        inds = frame_indices(spec["sampling"], decoded).reshape(-1)
        got, decoded = decode(path, inds)
    return [got[k] for k in inds.tolist()]


# ---- resize, crop, normalise -----------------------------------------------------------------------------


def resized_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(new_h, new_w): the short side scaled to short_side, each side rounded half up (mmcv)."""
    scale = short_side / min(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices and float32 weights along one axis, as torch computes them.

    src = scale * (dst + 0.5) - 0.5 in float32 with one rounding (torch's kernel compiles to a fused
    multiply-add), clamped at 0; weights are src's distance to its two neighbours.
    """
    f = np.float32
    scale = np.float64(f(n_in) / f(n_out))
    src = (scale * (np.arange(n_out) + 0.5) - 0.5).astype(f)  # exact in float64, rounded once
    src = np.maximum(src, f(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = np.clip(src - i0.astype(f), f(0), f(1)).astype(f)
    return i0, i1, (f(1) - l1).astype(f), l1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [M, H, W, 3] -> [M, h, w, 3], bilinear, align_corners=False, no antialiasing.

    Weights are float32 products as in torch; the sum of the four taps is exact (float64) and rounded once,
    within 3 float32 ulps of torch's vectorised sum (< 1e-6 after normalising by a std of ~57).
    """
    (h0, h1, a0, a1), (w0, w1, b0, b1) = _taps(x.shape[1], size[0]), _taps(x.shape[2], size[1])
    a0, a1 = a0[None, :, None, None], a1[None, :, None, None]
    b0, b1 = b0[None, None, :, None], b1[None, None, :, None]
    top, bottom = x[:, h0].astype(np.float64), x[:, h1].astype(np.float64)  # [M, h, W, 3]
    out = (a0 * b0) * top[:, :, w0] + (a0 * b1) * top[:, :, w1]
    out += (a1 * b0) * bottom[:, :, w0] + (a1 * b1) * bottom[:, :, w1]
    return out.astype(np.float32)


def crop_boxes(h: int, w: int, size: int, kind: str) -> list[tuple[int, int]]:
    """(top, left) per crop: center, or three along the long side (left/top, right/bottom, middle)."""
    top, left = (h - size) // 2, (w - size) // 2
    if kind == "center":
        return [(top, left)]
    if h <= w:
        step = (w - size) // 2
        return [(top, 0), (top, 2 * step), (top, step)]
    step = (h - size) // 2
    return [(0, left), (2 * step, left), (step, left)]


def _crops(x: np.ndarray, spec: dict) -> np.ndarray:
    """float32 frames of one size [M, H, W, 3] -> normalised crops [crops, M, S, S, 3]."""
    r, c, n = spec["resize"], spec["crop"], spec["normalize"]
    h, w = x.shape[1:3]
    size = (c["size"], c["size"]) if r["mode"] == "squash" else resized_size(h, w, r["short_side"])
    if size != (h, w):
        x = resize_bilinear(x, size)
    boxes = [(0, 0)] if c["kind"] == "none" else crop_boxes(*size, c["size"], c["kind"])
    s = c["size"]
    crops = np.stack([x[:, t : t + s, left : left + s] for t, left in boxes])  # [crops, M, S, S, 3]
    mean, std = np.asarray(n["mean"], np.float32), np.asarray(n["std"], np.float32)
    return (crops - mean) / std


def to_views(frames: list[np.ndarray], spec: dict) -> np.ndarray:
    """uint8 RGB frames (num_clips * T of [H, W, 3]) -> normalised float32 views [V, 3, T, S, S].

    Frames whose size changes mid-stream are resized run by run, each from its own size.
    """
    runs, k = [], 0
    while k < len(frames):
        j = k
        while j < len(frames) and frames[j].shape == frames[k].shape:
            j += 1
        runs.append(_crops(np.stack(frames[k:j]).astype(np.float32), spec))
        k = j
    crops = np.concatenate(runs, axis=1)  # [crops, M, S, S, 3]
    s, clips = spec["crop"]["size"], spec["sampling"]["num_clips"]
    k, m = crops.shape[:2]
    crops = crops.reshape(k, clips, m // clips, s, s, 3)  # [crops, clips, T, S, S, 3]
    views = crops.transpose(0, 1, 5, 2, 3, 4).reshape(k * clips, 3, m // clips, s, s)
    return np.ascontiguousarray(views[: spec["views"]["count"]], dtype=np.float32)


def load_views(path: str | Path, spec: dict) -> np.ndarray:
    """The model input for one video: float32 [V, 3, T, S, S], exactly as `stecache predict` makes it."""
    if spec.get("version", 1) > SPEC_VERSION:
        raise ValueError(f"preprocess spec version {spec['version']} is newer than this file's")
    return to_views(sampled_frames(path, spec), spec)


# ---- optional: run the exported model --------------------------------------------------------------------


def classify(path: str | Path, meta_path: str | Path) -> np.ndarray:
    """Probabilities [K] of one video with the model named in `meta_path`, averaged over its views."""
    meta = json.loads(Path(meta_path).read_text())
    if meta.get("head_only"):
        raise ValueError(f"{meta_path}: a head-only model takes features, not videos")
    x = load_views(path, meta["preprocess"])
    model = Path(meta_path).parent / meta["model"]
    if meta["format"] == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model))
        step = meta["input_shape"][0] if isinstance(meta["input_shape"][0], int) else len(x)
        logits = np.concatenate(
            [session.run(None, {meta["input_name"]: x[i : i + step]})[0] for i in range(0, len(x), step)]
        )
    else:
        import warnings

        import torch

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: still what loads anywhere
            logits = torch.jit.load(str(model))(torch.from_numpy(x)).numpy()
    logits = logits.astype(np.float64)  # [V, K]
    if meta["multi_label"]:
        p = 1 / (1 + np.exp(-logits))
    else:
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
    return p.mean(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video")
    ap.add_argument("--spec", help="the model's JSON [default: model.json here, else the only .json]")
    ap.add_argument("--out", help="write the views as .npy here")
    ap.add_argument("--classify", action="store_true", help="also run the model and print probabilities")
    args = ap.parse_args(argv)
    spec_path = args.spec
    if spec_path is None:
        here = Path(__file__).resolve().parent
        found = [here / "model.json"] if (here / "model.json").is_file() else sorted(here.glob("*.json"))
        if len(found) != 1:
            ap.error(f"give --spec: {len(found)} .json files beside {Path(__file__).name}")
        spec_path = found[0]
    try:
        x = load_views(args.video, load_spec(spec_path))
    except (OSError, ValueError, av.FFmpegError) as e:  # missing, not a video, no frames: one line, exit 1
        print(f"preprocess.py: {args.video}: cannot read it ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    print(f"{args.video}: views {list(x.shape)} float32")
    if args.out:
        np.save(args.out, x)
    if args.classify:
        meta = json.loads(Path(spec_path).read_text())
        p = classify(args.video, spec_path)
        for k in np.argsort(-p, kind="stable")[:5]:
            print(f"  {meta['class_names'][k]:<24} {100 * p[k]:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
