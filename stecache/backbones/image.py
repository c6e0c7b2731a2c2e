"""Any transformers vision encoder from a local directory (ViT, DINOv2, CLIP vision, ...), frame by frame.

`image:<dir>` loads `AutoModel.from_pretrained(dir)` (the vision tower if the model also has a text
tower), runs it on every frame and keeps the last hidden state's patch tokens: the leading
L - h*w tokens (CLS, registers) are dropped -> [B, T, c, h, w]. Pooled = the model's pooler output
(CLS after the final norm for DINOv2/CLIP), else the final CLS token, else the patch mean, averaged
over frames. Input size and mean/std come from the directory's preprocessor_config.json (ImageNet
defaults if it has none). Weights must all load (a missing pooler only switches pooling to CLS).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from stecache.backbones.base import Backbone, sha256_files, uniform_sampling
from stecache.errors import CheckpointMismatch

FRAMES = 8  # frames per clip, sampled uniformly over the clip (a per-frame encoder has no native T)
IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def read_preprocess(path: Path, model_size: int) -> dict:
    """Preprocess dict (0-255 units) from the directory's (video_)preprocessor_config.json; the crop is
    the model's input size (short side scaled along when the file's crop differs)."""
    pre = _preprocess(path, model_size)
    if pre["crop_size"] != model_size:
        short = round(pre["short_side"] * model_size / pre["crop_size"])
        pre = pre | {"short_side": short, "crop_size": model_size}
    return pre


def _preprocess(path: Path, model_size: int) -> dict:
    """Preprocess dict (0-255 units) from the directory's preprocessor_config.json."""
    files = [path / n for n in ("preprocessor_config.json", "video_preprocessor_config.json")]
    f = next((f for f in files if f.is_file()), None)
    pp = json.loads(f.read_text()) if f is not None else {}
    mean = [255 * m for m in pp["image_mean"]] if "image_mean" in pp else IMAGENET["mean"]
    std = [255 * s for s in pp["image_std"]] if "image_std" in pp else IMAGENET["std"]
    size, crop = pp.get("size", {}), pp.get("crop_size")
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if isinstance(size, dict) and "shortest_edge" in size and pp.get("do_center_crop", crop is not None):
        short = size["shortest_edge"]
        crop = crop or short
        return {"short_side": short, "crop_size": crop, "crop": "center", "mean": mean, "std": std}
    side = (size.get("height") if isinstance(size, dict) else size) or model_size
    return {"short_side": side, "crop_size": side, "crop": "resize", "mean": mean, "std": std}


class ImageEncoder(Backbone):
    """A per-frame image encoder: [B, 3, T, H, W] -> [B, T, c, h, w]."""

    def __init__(self, path: Path, frames: int = FRAMES):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if not (path / "config.json").is_file():
            raise CheckpointMismatch(
                f"image:{path}: no config.json there (save the model with save_pretrained)"
            )
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not files:
            raise CheckpointMismatch(f"image:{path}: no *.safetensors or *.bin weights")
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        kw = {"local_files_only": True, "output_loading_info": True}
        try:
            model, info = AutoModel.from_pretrained(path, attn_implementation="sdpa", **kw)
        except (ValueError, ImportError):  # model class without SDPA support
            model, info = AutoModel.from_pretrained(path, **kw)
        missing = sorted(info["missing_keys"])
        if any(not k.startswith("pooler.") for k in missing) or info["mismatched_keys"]:
            raise CheckpointMismatch(
                f"image:{path}: weights do not fit {type(model).__name__}; "
                f"missing keys: {', '.join(missing[:12])}; "
                f"wrong shapes: {sorted(map(str, info['mismatched_keys']))[:12]}"
            )
        if missing:  # e.g. a ViTForImageClassification save has no pooler: pool the CLS token instead
            model.pooler = None
        if hasattr(model, "vision_model") and hasattr(
            cfg, "vision_config"
        ):  # CLIP, SigLIP: keep the vision tower
            model, vcfg = model.vision_model, cfg.vision_config
        else:
            vcfg = cfg
        self.encoder = model
        patch = vcfg.patch_size if isinstance(vcfg.patch_size, int) else vcfg.patch_size[0]
        pre = _preprocess(
            path, int(vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0])
        )
        self.name, self.frames, self.size = f"image:{path}", frames, pre["crop_size"]
        self.channels, self.grid = vcfg.hidden_size, (frames, self.size // patch, self.size // patch)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self.config = {
            "family": "image",
            "model_type": cfg.model_type,
            "architecture": type(model).__name__,
            "frames": frames,
            "size": self.size,
            "patch": patch,
            "width": vcfg.hidden_size,
            "sampling": uniform_sampling(frames),
            "preprocess": pre,
            "test_views": [1, 3],
            "feature_layer": "last hidden state, patch tokens (CLS/register tokens dropped)",
        }
        self.checkpoint, self.checkpoint_sha256 = str(path), sha256_files(files)

    def _frames(self, clips: torch.Tensor):
        B, _, T, H, W = clips.shape
        x = clips.transpose(1, 2).reshape(B * T, 3, H, W)  # [B*T, 3, H, W], row b*T + t
        kw = {"interpolate_pos_encoding": True} if self._interpolate else {}
        return self.encoder(pixel_values=x, **kw)

    def _tokens_of(self, out, B: int) -> torch.Tensor:
        T, h, w = self.grid
        hidden = out.last_hidden_state  # [B*T, prefix + h*w, c]
        prefix = hidden.shape[1] - h * w
        if prefix < 0:
            raise ValueError(f"{self.name}: {hidden.shape[1]} tokens, fewer than the {h}x{w} patch grid")
        return hidden[:, prefix:].reshape(B, T, h, w, self.channels).permute(0, 1, 4, 2, 3)  # [B, T, c, h, w]

    def _tokens(self, clips: torch.Tensor) -> torch.Tensor:
        return self._tokens_of(self._frames(clips), len(clips))

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, B = self._frames(clips), len(clips)
        tokens = self._tokens_of(out, B)
        pool = getattr(out, "pooler_output", None)  # CLIP: post-LN CLS; DINOv2: final-LN CLS
        if pool is None and out.last_hidden_state.shape[1] > self.grid[1] * self.grid[2]:
            pool = out.last_hidden_state[:, 0]  # the CLS token after the final norm (ViT classifier input)
        if pool is None:
            return tokens, tokens.mean((1, 3, 4))
        return tokens, pool.reshape(B, self.frames, -1).mean(1)  # [B, c]


def build(path: str | Path, frames: int | None = None) -> ImageEncoder:
    """An image encoder from a local transformers directory, run on `frames` frames (default 8)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointMismatch(
            f"image:{path}: not a directory (expected a transformers save_pretrained dir)"
        )
    return ImageEncoder(path, FRAMES if frames is None else frames)
