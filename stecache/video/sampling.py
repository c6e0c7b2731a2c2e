"""Which frames of a video form a clip: the `Sampling` config and mmaction2's frame-index rules.

`sample_frames` reproduces mmaction2 `SampleFrames` (rule "dense"; out-of-range indices wrap: 'loop'),
`uniform_sample` reproduces `UniformSample` (rule "uniform"); `frame_indices` picks the rule of a
`Sampling`. Everything here is pure numpy on a frame count: no decoding.
Usage: `frame_indices(Sampling("uniform", clip_len=8), total=120)` -> int64 [num_clips, clip_len].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config, ConfigError


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
