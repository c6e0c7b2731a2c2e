"""Decoded frames -> normalised views: the `Preprocess` config, resize, crop, normalise, and boxes.

Reproduces mmaction2 `Resize(-1, S)` + `CenterCrop`/`ThreeCrop` (or a squash `Resize((S, S),
keep_ratio=False)`) and mean/std normalisation in 0-255 units; `box_pixels` turns an annotation box into
the pixel region cropped before all that. Works on uint8 RGB arrays [M, H, W, 3]; no decoding here.
Usage: `preprocess_frames(frames, num_clips, Preprocess())` -> float32 [V, 3, T, S, S].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, ConfigError
from ..errors import CorruptVideo


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
