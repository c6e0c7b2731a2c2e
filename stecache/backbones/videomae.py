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


def map_official(sd: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Official / mmaction2 VideoMAEv2 keys -> VideoMAEModel keys (+ `fc_norm.*`); heads dropped."""
    sd = strip_prefixes(sd)
    out = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.projection.", "patch_embed.proj.")  # mmaction2 (mmcv PatchEmbed)
        k = k.replace("mlp.layers.0.0.", "mlp.fc1.").replace(
            "mlp.layers.1.", "mlp.fc2."
        )  # mmaction2 (mmcv FFN)
        if k.startswith(("head.", "cls_head.")) or k == "pos_embed":
            if k == "pos_embed":
                out["_pos_embed"] = v
            continue
        if k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            p = f"encoder.layer.{i}."
            if rest == "attn.qkv.weight":
                q, kk, vv = v.split(width, dim=0)  # rows: q | k | v, each head-major
                out[p + "attention.attention.query.weight"] = q
                out[p + "attention.attention.key.weight"] = kk
                out[p + "attention.attention.value.weight"] = vv
            else:
                name = {
                    "attn.q_bias": "attention.attention.query.bias",
                    "attn.v_bias": "attention.attention.value.bias",
                    "attn.proj.weight": "attention.output.dense.weight",
                    "attn.proj.bias": "attention.output.dense.bias",
                    "norm1.weight": "layernorm_before.weight",
                    "norm1.bias": "layernorm_before.bias",
                    "norm2.weight": "layernorm_after.weight",
                    "norm2.bias": "layernorm_after.bias",
                    "mlp.fc1.weight": "intermediate.dense.weight",
                    "mlp.fc1.bias": "intermediate.dense.bias",
                    "mlp.fc2.weight": "output.dense.weight",
                    "mlp.fc2.bias": "output.dense.bias",
                }.get(rest, rest)
                out[p + name] = v
        else:
            out[k] = v  # fc_norm.*, or anything unknown (reported by the strict load)
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
        return x.reshape(len(x), n, h, w, self.channels).permute(0, 1, 4, 2, 3)  # [B, n, c, h, w]

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self._tokens(clips)
        return tokens, self.fc_norm(tokens.mean((1, 3, 4)))

    def load_checkpoint(self, path: Path) -> None:
        """Official file (any wrapper/prefix, fp16 ok), mmaction2 layout, or a transformers directory."""
        if path.is_dir():
            sd, files = self._read_transformers_dir(path)
            self.checkpoint_sha256 = sha256_files(files)
        else:
            sd = map_official(read_state_dict(path), self.channels)
            self.checkpoint_sha256 = sha256_file(path)
        pos = sd.pop("_pos_embed", None)
        table = self.encoder.embeddings.position_embeddings
        if pos is not None and (pos.shape != table.shape or (pos - table).abs().max() > 1e-3):
            raise CheckpointMismatch(
                f"checkpoint {path}: pos_embed {list(pos.shape)} is not the fixed sinusoid table "
                f"{list(table.shape)} this VideoMAEv2 uses (learned/interpolated positions unsupported)"
            )
        own = {f"encoder.{k}": v for k, v in sd.items() if not k.startswith("fc_norm.")}
        own |= {k: v for k, v in sd.items() if k.startswith("fc_norm.")}
        load_strict(self, own, path)
        self.checkpoint = str(path)

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
        return map_transformers(sd), files


def build(cfg: dict, name: str, checkpoint: Path | None) -> VideoMAEv2:
    """A VideoMAEv2 backbone; random weights (loudly) when `checkpoint` is None."""
    model = VideoMAEv2(name, cfg)
    if checkpoint is None:
        warn_random(name)
    else:
        model.load_checkpoint(Path(checkpoint))
    return model
