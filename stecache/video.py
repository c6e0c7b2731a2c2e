"""Video decoding, frame sampling and preprocessing: video file -> normalised clip tensor [V, 3, T, H, W].

Sampling reproduces mmaction2 `SampleFrames` (rule "dense", out-of-range indices wrap: 'loop') and
`UniformSample` (rule "uniform"); preprocessing reproduces `Resize(-1, S)` + `CenterCrop`/`ThreeCrop`
(or a squash `Resize((S, S), keep_ratio=False)`) and mean/std normalisation in 0-255 units. Decoding uses
PyAV sequentially and stops after the last needed frame. Unusable files raise `MissingVideo`,
`CorruptVideo`, `NoVideoStream` or `EmptyVideo`, each naming the file. Annotation readers live in
`annotations.py` and are re-exported here. Usage: `load_clip(path, Sampling(), Preprocess())`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .annotations import Clip, Dataset, load_dataset_dir, read_annotations, read_classes
from .config import Config, ConfigError
from .errors import CorruptVideo, EmptyVideo, MissingVideo, NoVideoStream

__all__ = ["Clip", "Dataset", "Sampling", "Preprocess", "sample_frames", "uniform_sample", "frame_indices"]
__all__ += ["count_frames", "iter_frames", "decode_frames", "load_clip", "preprocess_frames", "crop_views"]
__all__ += ["resized_size"]
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
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise CorruptVideo(f"{path}: cannot open as a video container ({e})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise NoVideoStream(f"{path}: no video stream (has: {', '.join(kinds)})")
    return container, container.streams.video[0]


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


# Headers of real-world files often over-count by a few frames (VFR, edit lists); a shortfall up to this
# share of the header count is resampled from the frames that do decode, a larger one is a truncated file.
HEADER_SLACK = 0.1


def iter_frames(path: str | Path, indices) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, uint8 RGB [H, W, 3]) for each distinct index, in order, decoding the stream once.

    Decoding stops after the largest index; only needed frames are converted to RGB. A stream that ends
    before the largest index raises ShortStream (a CorruptVideo), one with no frames EmptyVideo.
    """
    import av

    needed = set(np.asarray(indices, dtype=np.int64).reshape(-1).tolist())
    if not needed:
        raise ValueError("iter_frames needs at least one frame index")
    if min(needed) < 0:
        raise ValueError(f"negative frame index {min(needed)}")
    last = max(needed)
    container, stream = _open(path)
    i = -1
    with container:
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in needed:
                    yield i, frame.to_rgb().to_ndarray()  # as mmaction2 PyAVDecode
                if i >= last:
                    return
        except av.FFmpegError as e:
            raise CorruptVideo(f"{path}: decoding failed after {i + 1} frames ({e})") from None
    if i < 0:
        raise EmptyVideo(f"{path}: the video stream decodes to zero frames")
    msg = f"{path}: stream ended after {i + 1} frames; frame {last} was requested (truncated?)"
    raise ShortStream(msg, i + 1)


def decode_frames(path: str | Path, indices) -> np.ndarray:
    """Frames at `indices` (any order, repeats allowed), uint8 RGB [len(indices), H, W, 3]."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    got = dict(iter_frames(path, indices))
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


def load_clip(path: str | Path, sampling: Sampling, preprocess: Preprocess, rng=None) -> torch.Tensor:
    """Decode, sample and preprocess one video: float32 [V, 3, T, H, W], V = crops * num_clips, crop-major."""
    total = count_frames(path)
    state = rng.bit_generator.state if rng is not None else None  # a resample draws the same numbers
    inds = frame_indices(sampling, total, rng).reshape(-1)  # [num_clips*T]
    try:
        frames, inverse = _decode_unique(path, inds)
    except ShortStream as e:
        if e.decoded < total * (1 - HEADER_SLACK):
            raise
        if state is not None:
            rng.bit_generator.state = state
        frames, inverse = _decode_unique(path, frame_indices(sampling, e.decoded, rng).reshape(-1))
    views = crop_views(frames, preprocess)  # [crops, U, 3, S, S]
    return arrange_views(views[:, torch.as_tensor(inverse.reshape(-1))], sampling.num_clips)


def _decode_unique(path: str | Path, inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode each distinct index once (short clips repeat frames): (frames [U, H, W, 3], inverse [M])."""
    uniq, inverse = np.unique(inds, return_inverse=True)
    return decode_frames(path, uniq), inverse
