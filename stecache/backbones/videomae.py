"""VideoMAEv2 (ViT, tubelet 2, q/v-bias attention, fixed sinusoid positions) on transformers' VideoMAEModel.

Loads the official model-zoo file (`vit_b_k710_dl_from_giant.pth`: flat or under `module`/`model`, often
fp16, fused `qkv.weight` + `q_bias`/`v_bias`), the mmaction2-converted layout, or a transformers directory.
Tokens are block 11's output before `fc_norm`, token p = t*h*w + y*w + x -> [B, n, c, h, w]; the pooled
vector is `fc_norm(mean(tokens))` with the official eps 1e-6 (transformers' classifier uses 1e-5).
Frames are pinned to the checkpoint's 16: other counts need another position table (references §1.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import VideoMAEConfig, VideoMAEModel

from stecache.backbones.base import (
    Backbone,
    check_keys,
    load_strict,
    read_state_dict,
    sha256_file,
    sha256_files,
    strip_prefixes,
    warn_random,
)
from stecache.errors import CheckpointMismatch

IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
BASE = {
    "family": "videomaev2",
    "frames": 16,
    "tubelet": 2,
    "size": 224,
    "patch": 16,
    "width": 768,
    "depth": 12,
    "heads": 12,
    "mlp": 3072,
    "eps": 1e-6,
    "sampling": {"rule": "dense", "clip_len": 16, "frame_interval": 4, "num_clips": 1, "test_mode": True},
    "preprocess": {"short_side": 224, "crop_size": 224, "crop": "center", **IMAGENET},
    "test_views": [5, 3],
    "feature_layer": "block 11 output, before fc_norm (no final norm)",
}
TINY = {
    **BASE,
    "frames": 8,
    "size": 64,
    "width": 64,
    "depth": 2,
    "heads": 2,
    "mlp": 256,
    "sampling": {**BASE["sampling"], "clip_len": 8},
    "preprocess": {**BASE["preprocess"], "short_side": 64, "crop_size": 64},
    "feature_layer": "block 1 output, before fc_norm (no final norm)",
}


def hf_config(cfg: dict) -> VideoMAEConfig:
    """The transformers config that reproduces the official VideoMAEv2 encoder."""
    return VideoMAEConfig(
        image_size=cfg["size"],
        patch_size=cfg["patch"],
        num_frames=cfg["frames"],
        tubelet_size=cfg["tubelet"],
        hidden_size=cfg["width"],
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["heads"],
        intermediate_size=cfg["mlp"],
        hidden_act="gelu",
        layer_norm_eps=cfg["eps"],
        qv_bias=True,
        use_mean_pooling=True,
        attn_implementation="sdpa",
    )


BLOCK_KEYS = {  # official block key -> VideoMAEModel layer key (attn.qkv.weight is split into three)
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "attn.q_bias": "attention.attention.query.bias",
    "attn.v_bias": "attention.attention.value.bias",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "intermediate.dense.weight",
    "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight",
    "mlp.fc2.bias": "output.dense.bias",
}
MMACTION = {
    "patch_embed.projection.": "patch_embed.proj.",
    "mlp.layers.0.0.": "mlp.fc1.",
    "mlp.layers.1.": "mlp.fc2.",
}


def official_shapes(cfg: dict) -> dict[str, tuple]:
    """The official encoder keys and shapes (heads excluded): what a checkpoint must hold."""
    c, m, t, p = cfg["width"], cfg["mlp"], cfg["tubelet"], cfg["patch"]
    block = {k: (c,) for k in BLOCK_KEYS} | {"attn.qkv.weight": (3 * c, c), "attn.proj.weight": (c, c)}
    block |= {"mlp.fc1.weight": (m, c), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (c, m)}
    shapes = {"patch_embed.proj.weight": (c, 3, t, p, p), "patch_embed.proj.bias": (c,)}
    shapes |= {f"blocks.{i}.{k}": shape for i in range(cfg["depth"]) for k, shape in block.items()}
    return shapes | {"fc_norm.weight": (c,), "fc_norm.bias": (c,)}


def official_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, rename the mmaction2 layout to official names, drop classifier heads."""
    out = {}
    for k, v in strip_prefixes(sd).items():
        for old, new in MMACTION.items():
            k = k.replace(old, new)
        if not k.startswith(("head.", "cls_head.")):
            out[k] = v
    return out


def to_transformers(sd: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Official keys (checked) -> this module's keys: `encoder.` = VideoMAEModel, `fc_norm.` kept."""
    out = {}
    for k, v in sd.items():
        if k.startswith("patch_embed.proj."):
            out["encoder.embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            p = f"encoder.encoder.layer.{i}."
            if rest == "attn.qkv.weight":
                for name, part in zip(
                    ("query", "key", "value"), v.split(width), strict=True
                ):  # rows q | k | v
                    out[p + f"attention.attention.{name}.weight"] = part
            else:
                out[p + BLOCK_KEYS[rest]] = v
        else:
            out[k] = v  # fc_norm.*
    return out


def map_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers VideoMAE(ForVideoClassification) keys, v4 or v5 names -> VideoMAEModel keys."""
    out = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            continue
        k = k.removeprefix("videomae.")
        k = k.replace("attention.attention.q_bias", "attention.attention.query.bias")  # v4 names
        k = k.replace("attention.attention.v_bias", "attention.attention.value.bias")
        out[k] = v
    return out


class VideoMAEv2(Backbone):
    """VideoMAEv2 encoder: transformers VideoMAEModel + the official fc_norm (eps 1e-6)."""

    def __init__(self, name: str, cfg: dict):
        super().__init__()
        self.name, self.config = name, cfg
        self.frames, self.size, self.channels = cfg["frames"], cfg["size"], cfg["width"]
        self.grid = (
            cfg["frames"] // cfg["tubelet"],
            cfg["size"] // cfg["patch"],
            cfg["size"] // cfg["patch"],
        )
        self.encoder = VideoMAEModel(hf_config(cfg))
        self.fc_norm = nn.LayerNorm(cfg["width"], eps=cfg["eps"])

    def _tokens(self, clips: torch.Tensor) -> torch.Tensor:
        n, h, w = self.grid
        x = self.encoder(
            pixel_values=clips.transpose(1, 2)
        ).last_hidden_state  # [B, n*h*w, c], takes [B,T,3,H,W]
        return x.reshape(x.shape[0], n, h, w, self.channels).permute(0, 1, 4, 2, 3)  # [B, n, c, h, w]

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self._tokens(clips)
        return tokens, self.fc_norm(tokens.mean((1, 3, 4)))

    def load_checkpoint(self, path: Path) -> None:
        """Official file (any wrapper/prefix, fp16 ok), mmaction2 layout, or a transformers directory."""
        if path.is_dir():
            sd, files = self._read_transformers_dir(path)
            self.checkpoint_sha256 = sha256_files(files)
        else:
            sd = official_names(read_state_dict(path))
            self._check_pos_embed(sd.pop("pos_embed", None), path)
            check_keys(sd, official_shapes(self.config), path, f"{self.name} (official VideoMAEv2 layout)")
            sd = to_transformers(sd, self.channels)
            self.checkpoint_sha256 = sha256_file(path)
        load_strict(self, sd, path)
        self.checkpoint = str(path)

    def _check_pos_embed(self, pos: torch.Tensor | None, path: Path) -> None:
        """A stray `pos_embed` is tolerated only if it is the fixed sinusoid table (fp16-rounded)."""
        table = self.encoder.embeddings.position_embeddings
        if pos is not None and (pos.shape != table.shape or (pos - table).abs().max() > 1e-3):
            raise CheckpointMismatch(
                f"checkpoint {path}: pos_embed {list(pos.shape)} is not the fixed sinusoid table "
                f"{list(table.shape)} this VideoMAEv2 uses (learned/interpolated positions unsupported)"
            )

    def _read_transformers_dir(self, path: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointMismatch(
                f"checkpoint directory {path}: no config.json (not a transformers model dir)"
            )
        got = json.loads(cfg_file.read_text())
        want = hf_config(self.config).to_dict()
        keys = ["image_size", "patch_size", "num_frames", "tubelet_size", "hidden_size", "num_hidden_layers"]
        keys += ["num_attention_heads", "intermediate_size", "hidden_act", "qv_bias", "use_mean_pooling"]
        if "qkv_bias" in got:
            got["qv_bias"] = got["qkv_bias"]
        diff = [f"{k}={got.get(k)!r} (expected {want[k]!r})" for k in keys if got.get(k, want[k]) != want[k]]
        if diff:
            raise CheckpointMismatch(f"{cfg_file}: does not describe {self.name}: " + ", ".join(diff))
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not files:
            raise CheckpointMismatch(f"checkpoint directory {path}: no *.safetensors or pytorch_model*.bin")
        sd = {}
        for f in files:
            sd |= read_state_dict(f)
        sd = map_transformers(sd)
        return {k if k.startswith("fc_norm.") else f"encoder.{k}": v for k, v in sd.items()}, files


def build(cfg: dict, name: str, checkpoint: Path | None) -> VideoMAEv2:
    """A VideoMAEv2 backbone; random weights (loudly) when `checkpoint` is None."""
    model = VideoMAEv2(name, cfg)
    if checkpoint is None:
        warn_random(name)
    else:
        model.load_checkpoint(Path(checkpoint))
    return model
