"""The views of a clip an extraction stores: the backbone's protocol (1 view, or clips x crops) and K
augmented training views (random frames, random resized crop, flip), seeded per clip and view."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StecacheError
from ..video import Preprocess, Sampling, load_clip

AUG_SCALE = (0.25, 1.0)  # random-resized-crop area fraction of the short-side square (train views)
AUG_RATIO = (3 / 4, 4 / 3)  # and its aspect-ratio range; horizontal flip with p = 0.5


@dataclass(frozen=True)
class Views:
    """The views of one clip: the main protocol (1 or clips x crops) then K augmented ones."""

    sampling: Sampling
    preprocess: Preprocess
    train: int
    seed: int

    @property
    def count(self) -> int:
        return self.sampling.num_clips * self.preprocess.num_crops + self.train

    def provenance(self) -> dict:
        return {
            "count": self.count,
            "test": [self.sampling.num_clips, self.preprocess.num_crops],
            "train": self.train,
            "train_seed": self.seed if self.train else None,
            "augment": {"scale": list(AUG_SCALE), "ratio": list(AUG_RATIO), "flip": 0.5}
            if self.train
            else None,
        }


def plan_views(backbone: nn.Module, cfg) -> Views:
    """Views per clip from the backbone's protocol and the config."""
    sampling, preprocess = backbone.sampling, backbone.preprocess
    if cfg.test_views:
        clips, crops = backbone.test_views
        if crops not in (1, 3):
            raise StecacheError(f"{backbone.name}: test protocol with {crops} crops; only 1 or 3 supported")
        sampling = sampling.replace(num_clips=clips)
        preprocess = preprocess.replace(crop="three" if crops == 3 else "center")
    if cfg.train_views < 0:
        raise StecacheError(f"--train-views {cfg.train_views}: must be >= 0")
    return Views(sampling, preprocess, cfg.train_views, cfg.seed)


def augment(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random resized crop to size² and a random flip: [1, 3, T, S, S] -> [1, 3, T, size, size]."""
    s = x.shape[-1]
    area = s * s * rng.uniform(*AUG_SCALE)
    ratio = math.exp(rng.uniform(math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1])))
    w = min(s, max(1, round(math.sqrt(area * ratio))))
    h = min(s, max(1, round(math.sqrt(area / ratio))))
    top, left = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
    crop = x[0, :, :, top : top + h, left : left + w].transpose(0, 1)  # [T, 3, h, w]
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop.transpose(0, 1)[None]  # [1, 3, T, size, size]


def load_views(path: Path, views: Views, row: int, **source) -> torch.Tensor:
    """All views of one clip, float32 [V, 3, T, H, W]: main views (crop-major) then augmented ones.

    `source` goes to video.load_clip: start/end (segment), box, box_margin, strict, info."""
    out = [load_clip(path, views.sampling, views.preprocess, **source)]
    if views.train:
        p = views.preprocess
        square = p.replace(crop="center", crop_size=p.short_side) if p.crop != "resize" else p
        train_sampling = views.sampling.replace(num_clips=1, test_mode=False)
        for v in range(views.train):
            rng = np.random.default_rng([views.seed, row, v])
            x = load_clip(path, train_sampling, square, rng, **source)
            out.append(augment(x, p.crop_size, rng))
    return torch.cat(out)
