"""Shared fixtures: a cheap FakeBackbone with the real Backbone's attributes, a small synthetic dataset."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class FakeBackbone(nn.Module):
    """Deterministic stand-in for a video encoder: average-pools pixels into a [B, n, c, h, w] token map.

    Features depend on the pixels (so classes stay separable) through a fixed random projection.
    """

    def __init__(self, frames: int = 8, size: int = 32, grid=(4, 4, 4), channels: int = 16, seed: int = 0):
        super().__init__()
        from stecache.video import Preprocess, Sampling

        self.name = "fake"
        self.frames = frames
        self.sampling = Sampling(rule="uniform", clip_len=frames, num_clips=1, test_mode=True)
        self.test_views = (2, 3)
        self.preprocess = Preprocess(short_side=size, crop_size=size, crop="center")
        self.grid = tuple(grid)
        self.channels = channels
        self.config = {"frames": frames, "size": size, "grid": list(grid), "channels": channels, "seed": seed}
        self.checkpoint_sha256 = None
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(channels, 3, generator=g))
        self.requires_grad_(False).eval()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # [B, 3, T, H, W] -> [B, n, c, h, w]
        x = nn.functional.adaptive_avg_pool3d(clips, self.grid)  # [B, 3, n, h, w]
        x = torch.einsum("dc,bcnhw->bndhw", self.proj, x)
        return torch.tanh(x)

    def pooled(self, clips: torch.Tensor) -> torch.Tensor:  # [B, c]
        return self.forward(clips).mean((1, 3, 4))

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "config": self.config,
            "weights": "random",
            "frames": self.frames,
            "sampling": self.sampling.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "grid": list(self.grid),
            "channels": self.channels,
        }


@pytest.fixture
def fake_backbone() -> FakeBackbone:
    return FakeBackbone()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic dataset (single-label), generated once per test session."""
    from stecache.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_clips=48, seed=0)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models on a
    shared 2-core machine run far faster than two fighting threads, and bit-identity checks need one thread
    count throughout the module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
