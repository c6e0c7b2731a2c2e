"""VideoMAEv2 (ViT, tubelet 2, q/v-bias attention, fixed sinusoid positions) on transformers' VideoMAEModel.

Loads the official model-zoo file (`vit_b_k710_dl_from_giant.pth`: flat or under `module`/`model`, often
fp16, fused `qkv.weight` + `q_bias`/`v_bias`), the mmaction2-converted layout, or a transformers directory.
Tokens are the last block's output before `fc_norm`, token p = t*h*w + y*w + x -> [B, n, c, h, w]; the pooled
vector is `fc_norm(mean(tokens))` with the official eps 1e-6 (transformers' classifier uses 1e-5).
Sizes S/B/L/H/g (width, depth, MLP, patch, tubelet) are read from the checkpoint's shapes; T is any
multiple of the tubelet (native 16), with the fixed sinusoid table computed for T's token count in
float64 (the official `get_sinusoid_encoding_table` for a model built at T). A transformers directory
without `fc_norm` (a bare `VideoMAEModel` save) pools the plain token mean.
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


HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}  # official vit_{small,base,large,huge,giant}


def arch_from_shapes(sd: dict[str, torch.Tensor], cfg: dict) -> dict:
    """`cfg` with the width / depth / MLP / patch / tubelet an official-named state dict implies."""
    pe, fc1 = sd.get("patch_embed.proj.weight"), sd.get("blocks.0.mlp.fc1.weight")
    if pe is None or pe.ndim != 5 or fc1 is None:
        return cfg  # check_keys names what is missing
    c = pe.shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    heads = HEADS.get(c, cfg["heads"] if c == cfg["width"] else max(1, c // 64))
    out = cfg | {"width": c, "tubelet": pe.shape[2], "patch": pe.shape[-1], "depth": depth}
    out |= {"heads": heads, "mlp": fc1.shape[0]}
    out["feature_layer"] = f"block {depth - 1} output, before fc_norm (no final norm)"
    return out


def with_frames(cfg: dict, frames: int | None) -> dict:
    """`cfg` at T frames (None: native); T must be a positive multiple of the tubelet."""
    frames = cfg["frames"] if frames is None else frames
    if frames < cfg["tubelet"] or frames % cfg["tubelet"]:
        raise CheckpointMismatch(
            f"--frames {frames}: VideoMAEv2 embeds tubelets of {cfg['tubelet']} frames; use a multiple of it"
        )
    return cfg | {"frames": frames, "sampling": {**cfg["sampling"], "clip_len": frames}}


def sinusoid_table(n: int, c: int) -> torch.Tensor:
    """The official fixed position table [1, n, c], computed in float64 (sin even / cos odd channels)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    angle = pos / torch.pow(10000.0, 2 * (torch.arange(c, dtype=torch.float64) // 2) / c)
    angle[:, 0::2], angle[:, 1::2] = angle[:, 0::2].sin(), angle[:, 1::2].cos()
    return angle.float()[None]


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
        self.encoder = VideoMAEModel(hf_config(cfg))  # its sinusoid table: built for T, in float64
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

    def load_checkpoint(self, path: Path, sd: dict[str, torch.Tensor], sha256: str) -> None:
        """Load `sd` (this module's keys) strictly; a missing fc_norm (bare VideoMAEModel) pools the mean."""
        if not any(k.startswith("fc_norm.") for k in sd):
            self.fc_norm = nn.Identity()
            self.config = self.config | {"pooled": "token mean (no fc_norm in the checkpoint)"}
        load_strict(self, sd, path)
        self.checkpoint, self.checkpoint_sha256 = str(path), sha256


def check_pos_embed(pos: torch.Tensor | None, cfg: dict, path: Path) -> None:
    """A stray `pos_embed` is tolerated only if it is the fixed sinusoid table (fp16-rounded), any T."""
    if pos is None:
        return
    ok = pos.ndim == 3 and pos.shape[0] == 1 and pos.shape[2] == cfg["width"]
    if not ok or (pos - sinusoid_table(pos.shape[1], cfg["width"])).abs().max() > 1e-3:
        raise CheckpointMismatch(
            f"checkpoint {path}: pos_embed {list(pos.shape)} is not the fixed sinusoid table "
            f"this VideoMAEv2 uses (learned/interpolated positions unsupported)"
        )


def read_official(path: Path, cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg with the file's sizes, state dict in this module's keys) of an official / mmaction2 file."""
    sd = official_names(read_state_dict(path))
    pos = sd.pop("pos_embed", None)
    cfg = arch_from_shapes(sd, cfg)
    check_pos_embed(pos, cfg, path)
    check_keys(
        sd,
        official_shapes(cfg),
        path,
        f"VideoMAEv2 (official layout, width {cfg['width']}, depth {cfg['depth']})",
    )
    return cfg, to_transformers(sd, cfg["width"])


def read_transformers_dir(path: Path, cfg: dict) -> tuple[dict, dict[str, torch.Tensor], list[Path]]:
    """(cfg from config.json, state dict in this module's keys, weight files) of a save_pretrained dir."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointMismatch(
            f"checkpoint directory {path}: no config.json (not a transformers model dir)"
        )
    got = json.loads(cfg_file.read_text())
    if got.get("model_type") not in (None, "videomae"):
        raise CheckpointMismatch(f"{cfg_file}: model_type {got['model_type']!r} is not videomae")
    need = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            if k not in got]  # fmt: skip
    if need:
        raise CheckpointMismatch(f"{cfg_file}: no {', '.join(need)} (not a VideoMAE config)")
    if not got.get("qv_bias", got.get("qkv_bias", True)) or got.get("hidden_act", "gelu") != "gelu":
        raise CheckpointMismatch(f"{cfg_file}: qv_bias=false or hidden_act != gelu is not VideoMAEv2")
    size = got.get("image_size", 224)
    cfg = cfg | {
        "size": size,
        "patch": got.get("patch_size", 16),
        "frames": got.get("num_frames", 16),
        "tubelet": got.get("tubelet_size", 2),
        "width": got["hidden_size"],
        "depth": got["num_hidden_layers"],
        "heads": got["num_attention_heads"],
        "mlp": got["intermediate_size"],
        "sampling": {**cfg["sampling"], "clip_len": got.get("num_frames", 16)},
        "preprocess": {**cfg["preprocess"], "short_side": size, "crop_size": size},
        "feature_layer": f"block {got['num_hidden_layers'] - 1} output, before fc_norm (no final norm)",
    }
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointMismatch(f"checkpoint directory {path}: no *.safetensors or pytorch_model*.bin")
    sd = {}
    for f in files:
        sd |= read_state_dict(f)
    sd = map_transformers(sd)
    sd = {k if k.startswith("fc_norm.") else f"encoder.{k}": v for k, v in sd.items()}
    return cfg, sd, files


def build(cfg: dict, name: str, checkpoint: Path | None, frames: int | None = None) -> VideoMAEv2:
    """A VideoMAEv2 backbone sized by its checkpoint, at T frames; random weights (loudly) if None."""
    if checkpoint is None:
        warn_random(name)
        return VideoMAEv2(name, with_frames(cfg, frames))
    path = Path(checkpoint)
    if path.is_dir():
        cfg, sd, files = read_transformers_dir(path, cfg)
        sha = sha256_files(files)
    else:
        cfg, sd = read_official(path, cfg)
        sha = sha256_file(path)
    model = VideoMAEv2(name, with_frames(cfg, frames))
    model.load_checkpoint(path, sd, sha)
    return model
