"""Frozen video encoders returning patch-token maps [B, n, c, h, w], looked up by name.

`load("videomaev2", checkpoint="vit_b_k710_dl_from_giant.pth", frames=16)` returns a frozen `Backbone`
carrying everything the pipeline needs (frames, sampling, preprocess, grid, channels, provenance). Names:
`videomaev2`, `uniformerv2` (architecture read from the checkpoint; Base configs for random weights),
their `-tiny` variants (same code, small shapes, random weights, for tests and CPU demos), `image:<dir>`
(a transformers image encoder per frame), `hf:<dir>` (a transformers video encoder: VideoMAE, V-JEPA 2,
TimeSformer, ViViT, X-CLIP) and `timm:<model>` (a timm image encoder per frame, weights via --checkpoint).
`checkpoint` is a local file/dir or `hf://<org>/<repo>/<path>` (hub cache); None = random weights, said
loudly and recorded as `"weights": "random"`. `frames=None` keeps each backbone's native T.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from stecache.backbones import hub, uniformer, videomae
from stecache.backbones.base import RANDOM_SEED, Backbone
from stecache.errors import CheckpointMismatch, StecacheError

BACKBONES = {
    "videomaev2": partial(videomae.build, videomae.BASE, "videomaev2"),
    "videomaev2-tiny": partial(videomae.build, videomae.TINY, "videomaev2-tiny"),
    "uniformerv2": partial(uniformer.build, uniformer.BASE, "uniformerv2"),
    "uniformerv2-tiny": partial(uniformer.build, uniformer.TINY, "uniformerv2-tiny"),
}
PREFIXES = ("image:", "hf:", "timm:")  # open families: the rest of the name says which model

__all__ = ["BACKBONES", "Backbone", "load"]


class UnknownBackbone(StecacheError, ValueError):
    """A backbone name that is neither in BACKBONES nor image:<dir> / hf:<dir> / timm:<model>."""


def load(
    name: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    frames: int | None = None,
) -> Backbone:
    """A frozen backbone by name at `frames` frames (None = native); `checkpoint` local or hf://."""
    if frames is not None and frames < 1:
        raise CheckpointMismatch(f"--frames {frames}: must be >= 1")
    source = None
    if hub.is_hub(checkpoint):
        source, checkpoint = str(checkpoint), hub.resolve(str(checkpoint))
    if name.startswith(("image:", "hf:")):
        if checkpoint is not None:
            raise CheckpointMismatch(
                f"{name}: the directory in the name holds the weights; drop --checkpoint"
            )
        if name.startswith("image:"):
            from stecache.backbones import image

            model = image.build(name.removeprefix("image:"), frames)
        else:
            from stecache.backbones import hfvideo

            model = hfvideo.build(name.removeprefix("hf:"), frames)
    elif name.startswith("timm:"):
        from stecache.backbones import timmenc

        model = timmenc.build(name.removeprefix("timm:"), _local(checkpoint), frames)
    elif name in BACKBONES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = BACKBONES[name](_local(checkpoint), frames=frames)
    else:
        raise UnknownBackbone(
            f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}, image:<dir>, hf:<dir> "
            "or timm:<model>"
        )
    model.checkpoint_source = source
    return model.freeze(device)


def _local(checkpoint: str | Path | None) -> Path | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise CheckpointMismatch(f"checkpoint {checkpoint}: no such file or directory")
    return path
