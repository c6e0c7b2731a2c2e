"""Video decoding, frame sampling and preprocessing: video file -> normalised clip tensor [V, 3, T, H, W].

Sampling reproduces mmaction2 `SampleFrames` (rule "dense", out-of-range indices wrap: 'loop') and
`UniformSample` (rule "uniform"); preprocessing reproduces `Resize(-1, S)` + `CenterCrop`/`ThreeCrop`
(or a squash `Resize((S, S), keep_ratio=False)`) and mean/std normalisation in 0-255 units. Decoding uses
PyAV sequentially and stops after the last needed frame. Unusable files raise `MissingVideo`,
`CorruptVideo`, `NoVideoStream` or `EmptyVideo`, each naming the file. Annotation readers live in
`annotations.py` and are re-exported here. Usage: `load_clip(path, Sampling(), Preprocess())`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .annotations import Clip, Dataset, load_dataset_dir, read_annotations, read_classes
from .annotations.common import FRAME_SUFFIXES
from .config import Config, ConfigError
from .errors import CorruptVideo, EmptyVideo, MissingVideo, NoVideoStream

__all__ = ["Clip", "Dataset", "Sampling", "Preprocess", "sample_frames", "uniform_sample", "frame_indices"]
__all__ += ["count_frames", "iter_frames", "decode_frames", "load_clip", "preprocess_frames", "crop_views"]
__all__ += ["resized_size", "segment_frames", "frame_files", "box_pixels", "BrokenStream", "ShortStream"]
__all__ += ["read_annotations", "read_classes", "load_dataset_dir"]


@dataclass(frozen=True)
class Sampling(Config):
    """Which frames of a video form the clip(s)."""

    rule: str = "dense"  # "dense" = mmaction2 SampleFrames, "uniform" = mmaction2 UniformSample
    clip_len: int = 16
    frame_interval: int = 4  # dense only
    num_clips: int = 1
    test_mode: bool = True

    def __post_init__(self):
        if self.rule not in ("dense", "uniform"):
            raise ConfigError(f"Sampling.rule must be 'dense' or 'uniform', got {self.rule!r}")
        for name in ("clip_len", "frame_interval", "num_clips"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"Sampling.{name} must be an integer >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Preprocess(Config):
    """Resize, crop and normalisation of decoded frames."""

    short_side: int = 224
    crop_size: int = 224
    crop: str = "center"  # "center" | "three" | "resize" (squash to crop_size², no crop)
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # 0–255 units, RGB
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self):
        if self.crop not in ("center", "three", "resize"):
            raise ConfigError(f"Preprocess.crop must be 'center', 'three' or 'resize', got {self.crop!r}")
        if self.short_side < 1 or self.crop_size < 1:
            raise ConfigError("Preprocess.short_side and crop_size must be >= 1")
        if self.crop != "resize" and self.crop_size > self.short_side:
            raise ConfigError(f"Preprocess.crop_size {self.crop_size} > short_side {self.short_side}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("Preprocess.mean/std need 3 values each, std > 0")

    @property
    def num_crops(self) -> int:
        return 3 if self.crop == "three" else 1


# ---- sampling --------------------------------------------------------------------------------------------


def sample_frames(
    total: int, clip_len: int, frame_interval: int, num_clips: int, test_mode: bool, rng=None
) -> np.ndarray:
    """mmaction2 SampleFrames frame indices, [num_clips, clip_len] int64; out-of-range wraps ('loop').

    Train mode draws from `rng` (a numpy Generator) where mmaction2 uses the global numpy RNG: same
    distribution, reproducible per call.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if test_mode:
        ori_clip_len = (clip_len - 1) * frame_interval + 1
        if clip_len == 1:  # mmaction2's 2D-recogniser branch: the middle frame of each of num_clips segments
            avg = total / float(num_clips)
            offsets = np.arange(num_clips) * avg + avg / 2.0
        else:
            max_offset = max(total - ori_clip_len, 0)
            if num_clips > 1:
                offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
            else:
                offsets = np.array([max_offset // 2])
    else:
        ori_clip_len = clip_len * frame_interval
        avg_interval = (total - ori_clip_len + 1) // num_clips
        if avg_interval > 0:
            offsets = np.arange(num_clips) * avg_interval + rng.integers(avg_interval, size=num_clips)
        elif total > max(num_clips, ori_clip_len):
            offsets = np.sort(rng.integers(total - ori_clip_len + 1, size=num_clips))
        elif avg_interval == 0:
            offsets = np.around(np.arange(num_clips) * ((total - ori_clip_len + 1.0) / num_clips))
        else:
            offsets = np.zeros(num_clips)
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval  # [num_clips, clip_len]
    return np.mod(inds, total).astype(np.int64)  # float -> int truncates, as mmaction2's astype(int32)


def uniform_sample(total: int, clip_len: int, num_clips: int, test_mode: bool, rng=None) -> np.ndarray:
    """mmaction2 UniformSample frame indices, [num_clips, clip_len] int64 (train: one draw per clip)."""
    rng = rng if rng is not None else np.random.default_rng()
    seg = float(total - 1) / clip_len
    starts = np.array([int(np.round(seg * i)) for i in range(clip_len)])
    if test_mode:
        duration = seg / (num_clips + 1)
        inds = np.stack([starts + int(duration * (k + 1)) for k in range(num_clips)])
    else:  # a random frame in [round(seg*i), round(seg*(i+1))] per segment
        ends = np.array([int(np.round(seg * (i + 1))) for i in range(clip_len)])
        inds = np.stack([rng.integers(starts, ends + 1) for _ in range(num_clips)])
    return np.minimum(inds, total - 1).astype(np.int64)  # never out of range, so the min never acts


def frame_indices(sampling: Sampling, total: int, rng=None) -> np.ndarray:
    """Frame indices of `sampling` for a video of `total` frames, [num_clips, clip_len]."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got total={total}")
    s = sampling
    if s.rule == "dense":
        return sample_frames(total, s.clip_len, s.frame_interval, s.num_clips, s.test_mode, rng)
    return uniform_sample(total, s.clip_len, s.num_clips, s.test_mode, rng)


# ---- decoding --------------------------------------------------------------------------------------------


def _open(path: str | Path):
    """Open a container and its first video stream, turning every failure into a typed error."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MissingVideo(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise CorruptVideo(f"{path}: empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(PLAYLIST_MAGIC):  # FFmpeg would follow its entries anywhere: never a clip
        raise CorruptVideo(f"{path}: a playlist (HLS/ffconcat), not a video; refused")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise CorruptVideo(f"{path}: cannot open as a video container ({e})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise NoVideoStream(f"{path}: no video stream (has: {', '.join(kinds)})")
    return container, container.streams.video[0]


PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"[playlist]")


def count_frames(path: str | Path) -> int:
    """Number of frames of the first video stream (header count; counted by demuxing if absent)."""
    import av

    container, stream = _open(path)
    with container:
        n = stream.frames
        if n <= 0:
            try:
                n = sum(1 for p in container.demux(stream) if p.size)
            except av.FFmpegError as e:
                raise CorruptVideo(f"{path}: cannot read packets ({e})") from None
    if n <= 0:
        raise EmptyVideo(f"{path}: the video stream has no frames")
    return n


class ShortStream(CorruptVideo):
    """The stream decodes to fewer frames than its header claims; `.decoded` says how many it gave."""

    def __init__(self, message: str, decoded: int):
        super().__init__(message)
        self.decoded = decoded


class BrokenStream(CorruptVideo):
    """Decoding failed after `.decoded` good frames (a damaged or cut file)."""

    def __init__(self, message: str, decoded: int):
        super().__init__(message)
        self.decoded = decoded


def iter_frames(
    path: str | Path, indices, start: float | None = None, end: float | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, uint8 RGB [H, W, 3]) for each distinct index, in order, decoding the stream once.

    Decoding stops after the largest index; only needed frames are converted to RGB. With `start`/`end`
    (seconds) index 0 is the first frame of the segment and decoding seeks to it. A frame folder yields
    its images. A stream that ends before the largest index raises ShortStream, one that fails after good
    frames BrokenStream (both CorruptVideo, with `.decoded`), one with no frames EmptyVideo.
    """
    import av

    needed = set(np.asarray(indices, dtype=np.int64).reshape(-1).tolist())
    if not needed:
        raise ValueError("iter_frames needs at least one frame index")
    if min(needed) < 0:
        raise ValueError(f"negative frame index {min(needed)}")
    last = max(needed)
    if Path(path).is_dir():
        files = frame_files(path)
        for i in sorted(k for k in needed if k < len(files)):
            yield i, _read_image(files[i])
        if last >= len(files):
            raise ShortStream(f"{path}: {len(files)} frames; frame {last} was requested", len(files))
        return
    container, stream = _open(path)
    i = -1
    with container:
        try:
            for i, frame in enumerate(_decode(container, stream, start, end)):
                if i in needed:
                    yield i, frame.to_rgb().to_ndarray()  # as mmaction2 PyAVDecode
                if i >= last:
                    return
        except av.FFmpegError as e:
            msg = f"{path}: decoding failed after {i + 1} frames ({e})"
            raise (BrokenStream(msg, i + 1) if i >= 0 else CorruptVideo(msg)) from None
    if i < 0:
        where = f" in the segment [{start}, {end}] s" if start is not None or end is not None else ""
        raise EmptyVideo(f"{path}: the video stream decodes to zero frames{where}")
    msg = f"{path}: stream ended after {i + 1} frames; frame {last} was requested (truncated?)"
    raise ShortStream(msg, i + 1)


def _decode(container, stream, start: float | None, end: float | None):
    """Decoded frames of [start, end) seconds from the stream's first timestamp; seeks to `start`."""
    if start is None and end is None:
        yield from container.decode(stream)
        return
    tb = float(stream.time_base)
    t0 = (stream.start_time or 0) * tb
    if start:
        container.seek(int((start + t0) / tb), stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        t = (frame.pts if frame.pts is not None else 0) * tb - t0
        if start is not None and t < start - 1e-6:
            continue
        if end is not None and t >= end - 1e-6:
            return
        yield frame


def segment_frames(path: str | Path, start: float | None, end: float | None) -> int:
    """Frames of a segment, counted from packet timestamps after a seek (no decoding)."""
    import av

    container, stream = _open(path)
    tb = float(stream.time_base)
    t0 = (stream.start_time or 0) * tb
    n = 0
    with container:
        try:
            if start:
                container.seek(int((start + t0) / tb), stream=stream, backward=True, any_frame=False)
            for p in container.demux(stream):
                if p.pts is None or not p.size:
                    continue
                t = p.pts * tb - t0
                if (start is None or t >= start - 1e-6) and (end is None or t < end - 1e-6):
                    n += 1
                if end is not None and p.dts is not None and p.dts * tb - t0 >= end + 1:
                    break  # decode order is past the segment (1 s of slack for B-frame reordering)
        except av.FFmpegError as e:
            if not n:
                raise CorruptVideo(f"{path}: cannot read packets ({e})") from None
    if n <= 0:
        raise EmptyVideo(f"{path}: no frames in the segment [{start}, {end}] s")
    return n


def frame_files(folder: str | Path) -> list[Path]:
    """The image files of a frame folder, in name order (img_00001.jpg ... as mmaction2 writes them)."""
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file())
    if any(f.name.startswith("img_") for f in files):  # mmaction2's filename_tmpl; flow_x_... etc. beside
        files = [f for f in files if f.name.startswith("img_")]
    if not files:
        raise EmptyVideo(f"{folder}: frame folder without images ({', '.join(FRAME_SUFFIXES)})")
    return files


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise CorruptVideo(f"{path}: cannot read the image ({e})") from None


def box_pixels(box, h: int, w: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of box x1,y1,x2,y2 (pixels, or all <= 1 = normalised) grown by
    `margin` x its size on each side, rounded outwards and clipped to the frame."""
    x1, y1, x2, y2 = box
    if max(box) <= 1.0:
        x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, math.floor(x1 - mx)), max(0, math.floor(y1 - my))
    right, bottom = min(w, math.ceil(x2 + mx)), min(h, math.ceil(y2 + my))
    if right <= left or bottom <= top:
        raise CorruptVideo(f"box {tuple(box)} lies outside the {w}x{h} frame")
    return top, left, bottom, right


def decode_frames(path: str | Path, indices, start=None, end=None) -> np.ndarray:
    """Frames at `indices` (any order, repeats allowed), uint8 RGB [len(indices), H, W, 3]."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    got = dict(iter_frames(path, indices, start, end))
    return np.stack([got[k] for k in indices.tolist()])


# ---- preprocessing ---------------------------------------------------------------------------------------


def resized_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(new_h, new_w) as mmcv.rescale_size((w, h), (inf, short_side)): scale the short side, round half up."""
    scale = short_side / min(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def crop_offsets(h: int, w: int, size: int, crop: str) -> list[tuple[int, int]]:
    """(top, left) of each crop as mmaction2 CenterCrop / ThreeCrop (left, right, middle on the long side)."""
    top, left = (h - size) // 2, (w - size) // 2
    if crop == "center":
        return [(top, left)]
    if h <= w:  # landscape or square: crops along the width
        step = (w - size) // 2
        return [(top, 0), (top, 2 * step), (top, step)]
    step = (h - size) // 2
    return [(0, left), (2 * step, left), (step, left)]


def crop_views(frames: np.ndarray | torch.Tensor, p: Preprocess, chunk: int = 16) -> torch.Tensor:
    """uint8 RGB frames [M, H, W, 3] -> resized, cropped, normalised float32 [crops, M, 3, S, S].

    Resize is bilinear with half-pixel centres and no antialiasing, i.e. cv2.INTER_LINEAR as mmcv uses;
    we stay in float (mmcv rounds to uint8 after resizing, a difference of at most half a grey level).
    Frames go through in chunks so a long full-HD clip never sits in memory as float at full size.
    """
    frames = torch.as_tensor(frames)
    h, w = frames.shape[1:3]
    size = (p.crop_size, p.crop_size) if p.crop == "resize" else resized_size(h, w, p.short_side)
    boxes = [(0, 0)] if p.crop == "resize" else crop_offsets(*size, p.crop_size, p.crop)
    c = p.crop_size
    out = []
    for part in frames.split(chunk):
        x = part.permute(0, 3, 1, 2).float()  # [m, 3, H, W]
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        out.append(
            torch.stack([x[:, :, t : t + c, left : left + c] for t, left in boxes])
        )  # [crops, m, 3, S, S]
    x = torch.cat(out, dim=1)
    mean = torch.tensor(p.mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
    std = torch.tensor(p.std, dtype=torch.float32).view(1, 1, 3, 1, 1)
    return (x - mean) / std


def arrange_views(x: torch.Tensor, num_clips: int) -> torch.Tensor:
    """[crops, num_clips*T, 3, S, S] -> [V, 3, T, S, S] with V = crop * num_clips + clip (mmaction2 NCTHW)."""
    n_crops, m = x.shape[:2]
    x = x.reshape(n_crops, num_clips, m // num_clips, *x.shape[2:])  # [crops, clips, T, 3, S, S]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [crops, clips, 3, T, S, S]
    return x.reshape(n_crops * num_clips, *x.shape[2:]).contiguous()


def preprocess_frames(frames: np.ndarray | torch.Tensor, num_clips: int, p: Preprocess) -> torch.Tensor:
    """uint8 RGB frames [num_clips*T, H, W, 3] -> normalised float32 views [V, 3, T, S, S], crop-major."""
    return arrange_views(crop_views(frames, p), num_clips)


def load_clip(
    path: str | Path,
    sampling: Sampling,
    preprocess: Preprocess,
    rng=None,
    *,
    start: float | None = None,
    end: float | None = None,
    box=None,
    box_margin: float = 0.0,
    strict: bool = False,
    info: dict | None = None,
) -> torch.Tensor:
    """Decode, sample and preprocess one clip: float32 [V, 3, T, H, W], V = crops * num_clips, crop-major.

    `path` is a video file or a frame folder; `start`/`end` (seconds) cut a segment (decoded after a
    seek); `box` is cropped (grown by `box_margin`) before the resize/crop. Frames that exist are sampled
    when the header over-counts; a stream failing after good frames is sampled from those and recorded in
    `info` (decoded, declared, partial=True) unless `strict`. Frames of different sizes are resized each.
    """
    if Path(path).is_dir():
        total = len(frame_files(path))
    elif start is not None or end is not None:
        total = segment_frames(path, start, end)
    else:
        total = count_frames(path)
    state = rng.bit_generator.state if rng is not None else None  # a resample draws the same numbers
    inds = frame_indices(sampling, total, rng).reshape(-1)  # [num_clips*T]
    try:
        frames, inverse = _decode_unique(path, inds, start, end)
    except (ShortStream, BrokenStream) as e:
        broken = isinstance(e, BrokenStream)
        if broken and strict:
            raise
        if info is not None:
            info.update(decoded=e.decoded, declared=total, partial=broken)
        if state is not None:
            rng.bit_generator.state = state
        inds = frame_indices(sampling, e.decoded, rng).reshape(-1)
        frames, inverse = _decode_unique(path, inds, start, end)
    if box is not None:
        frames = [f[t:b, lf:r] for f in frames for t, lf, b, r in [box_pixels(box, *f.shape[:2], box_margin)]]
    views = _crop_views_each_size(frames, preprocess)  # [crops, U, 3, S, S]
    return arrange_views(views[:, torch.as_tensor(inverse.reshape(-1))], sampling.num_clips)


def _crop_views_each_size(frames: list[np.ndarray], p: Preprocess) -> torch.Tensor:
    """crop_views over frames that may differ in size (a stream whose resolution changes mid-way)."""
    out, k = [], 0
    while k < len(frames):
        j = k
        while j < len(frames) and frames[j].shape == frames[k].shape:
            j += 1
        out.append(crop_views(np.stack(frames[k:j]), p))  # [crops, j-k, 3, S, S]
        k = j
    return torch.cat(out, dim=1)


def _decode_unique(path, inds: np.ndarray, start=None, end=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode each distinct index once (short clips repeat frames): (frames U x [H, W, 3], inverse [M])."""
    uniq, inverse = np.unique(inds, return_inverse=True)
    got = dict(iter_frames(path, uniq, start, end))
    return [got[k] for k in uniq.tolist()], inverse
