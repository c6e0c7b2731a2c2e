"""Frozen video encoders returning patch-token maps [B, n, c, h, w], looked up by name.

`load("videomaev2", checkpoint="vit_b_k710_dl_from_giant.pth")` returns a frozen `Backbone` carrying
everything the pipeline needs (frames, sampling, preprocess, grid, channels, provenance). Names:
`videomaev2`, `uniformerv2` (official Base configs), their `-tiny` variants (same code, small shapes,
random weights, for tests and CPU demos), and `image:<dir>` (any transformers vision encoder per frame).
`checkpoint=None` means random weights, said loudly and recorded as `"weights": "random"`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from stecache.backbones import uniformer, videomae
from stecache.backbones.base import RANDOM_SEED, Backbone
from stecache.errors import CheckpointMismatch, StecacheError

BACKBONES = {
    "videomaev2": partial(videomae.build, videomae.BASE, "videomaev2"),
    "videomaev2-tiny": partial(videomae.build, videomae.TINY, "videomaev2-tiny"),
    "uniformerv2": partial(uniformer.build, uniformer.BASE, "uniformerv2"),
    "uniformerv2-tiny": partial(uniformer.build, uniformer.TINY, "uniformerv2-tiny"),
}

__all__ = ["BACKBONES", "Backbone", "load"]


class UnknownBackbone(StecacheError, ValueError):
    """A backbone name that is neither in BACKBONES nor image:<dir>."""


def load(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> Backbone:
    """A frozen backbone by name; `checkpoint` is a local file/dir (None = seeded random weights)."""
    if name.startswith("image:"):
        from stecache.backbones import image

        if checkpoint is not None:
            raise CheckpointMismatch(
                f"{name}: the directory in the name holds the weights; drop --checkpoint"
            )
        model = image.build(name.removeprefix("image:"))
    elif name in BACKBONES:
        if checkpoint is not None and not Path(checkpoint).expanduser().exists():
            raise CheckpointMismatch(f"checkpoint {checkpoint}: no such file or directory (local files only)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = BACKBONES[name](None if checkpoint is None else Path(checkpoint).expanduser())
    else:
        raise UnknownBackbone(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} or image:<dir>")
    return model.freeze(device)
