"""Any timm image encoder, frame by frame, as `timm:<model_name>` with local weights (`--checkpoint`).

`timm.create_model(name, pretrained=False, num_classes=0)` then the checkpoint (safetensors or
`torch.load(weights_only=True)`, classifier keys dropped) loaded strictly. Each frame goes through
`forward_features`: ViT-like models give [prefix + h*w, c] tokens (the `num_prefix_tokens` CLS/register
tokens dropped), CNNs their last feature map [c, h, w] (NHWC outputs, e.g. Swin, are transposed).
Pooled = `forward_head(pre_logits=True)`, the model's own pooling, averaged over frames. Input size,
crop_pct and mean/std come from the model's `pretrained_cfg`. timm is optional: `pip install stecache[timm]`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stecache.backbones.base import (
    RANDOM_SEED,
    Backbone,
    load_strict,
    read_state_dict,
    sha256_file,
    strip_prefixes,
    uniform_sampling,
    warn_random,
)
from stecache.errors import CheckpointMismatch

FRAMES = 8  # like image:<dir>: a per-frame encoder has no native T


def _timm():
    try:
        import timm
    except ImportError as e:
        raise CheckpointMismatch(f"timm:<model> needs timm: pip install 'stecache[timm]' ({e})") from e
    return timm


class TimmEncoder(Backbone):
    """A timm image model per frame: [B, 3, T, H, W] -> [B, T, c, h, w]."""

    def __init__(self, model_name: str, frames: int):
        super().__init__()
        timm = _timm()
        if model_name not in timm.list_models():
            raise CheckpointMismatch(f"timm:{model_name}: timm {timm.__version__} has no such model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0)
        pc = self.model.pretrained_cfg
        size = int(pc.get("input_size", (3, 224, 224))[-1])
        crop_pct = pc.get("crop_pct") or 1.0
        mean = [255 * m for m in pc.get("mean", (0.485, 0.456, 0.406))]
        std = [255 * s for s in pc.get("std", (0.229, 0.224, 0.225))]
        self.name, self.frames, self.size = f"timm:{model_name}", frames, size
        self.prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        self.channels = int(self.model.num_features)
        with torch.no_grad():
            probe = self.model.eval().forward_features(torch.zeros(1, 3, size, size))
        _, h, w = self._map(probe).shape[1:]
        self.grid = (frames, h, w)
        self.config = {
            "family": "timm",
            "model": model_name,
            "frames": frames,
            "size": size,
            "width": self.channels,
            "sampling": uniform_sampling(frames),
            "preprocess": {
                "short_side": round(size / crop_pct),
                "crop_size": size,
                "crop": "center",
                "mean": mean,
                "std": std,
            },  # fmt: skip
            "test_views": [1, 3],
            "feature_layer": "forward_features: tokens without prefix tokens / last feature map",
        }

    def _map(self, feats: torch.Tensor) -> torch.Tensor:
        """forward_features output of N frames -> [N, c, h, w]."""
        if feats.ndim == 3:  # [N, prefix + h*w, c]
            n = feats.shape[1] - self.prefix
            s = round(n**0.5)
            if s * s != n:
                raise CheckpointMismatch(f"{self.name}: {n} patch tokens do not form a square grid")
            return feats[:, self.prefix :].reshape(len(feats), s, s, -1).permute(0, 3, 1, 2)
        if feats.ndim == 4 and feats.shape[1] != self.channels and feats.shape[-1] == self.channels:
            return feats.permute(0, 3, 1, 2)  # NHWC (Swin, some MLP models)
        if feats.ndim == 4:
            return feats
        raise CheckpointMismatch(
            f"{self.name}: forward_features gave {list(feats.shape)}, not tokens or a map"
        )

    def _features(self, clips: torch.Tensor) -> torch.Tensor:
        B, _, T, H, W = clips.shape
        return self.model.forward_features(clips.transpose(1, 2).reshape(B * T, 3, H, W))  # row b*T + t

    def _tokens_of(self, feats: torch.Tensor, B: int) -> torch.Tensor:
        m = self._map(feats)  # [B*T, c, h, w]
        return m.reshape(B, self.frames, *m.shape[1:])  # [B, T, c, h, w]

    def _tokens(self, clips: torch.Tensor) -> torch.Tensor:
        return self._tokens_of(self._features(clips), len(clips))

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, B = self._features(clips), len(clips)
        pooled = self.model.forward_head(feats, pre_logits=True)  # [B*T, c]
        return self._tokens_of(feats, B), pooled.reshape(B, self.frames, -1).mean(1)

    def load_checkpoint(self, path: Path) -> None:
        """A timm state dict (safetensors / torch), any wrapper; classifier keys are dropped."""
        sd = strip_prefixes(read_state_dict(path))
        want = {k for k in self.model.state_dict()}
        heads = self.model.pretrained_cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        sd = {k: v for k, v in sd.items() if k in want or not k.startswith(tuple(h + "." for h in heads))}
        load_strict(self.model, sd, path)
        self.checkpoint, self.checkpoint_sha256 = str(path), sha256_file(path)


def build(model_name: str, checkpoint: Path | None, frames: int | None = None) -> TimmEncoder:
    """A timm encoder with weights from a local file (random, loudly, when None)."""
    model = TimmEncoder(model_name, FRAMES if frames is None else frames)
    if checkpoint is None:
        warn_random(model.name)
    elif checkpoint.is_dir():
        raise CheckpointMismatch(
            f"checkpoint {checkpoint}: timm:<model> needs a weights file, not a directory"
        )
    else:
        model.load_checkpoint(checkpoint)
    return model
