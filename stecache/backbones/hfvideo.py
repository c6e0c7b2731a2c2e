"""Any transformers video encoder from a local `save_pretrained` folder, as `hf:<dir>`.

Families (config.json `model_type`; the class from `architectures`, bare model or its classification
wrapper) and how their last hidden state maps to [B, n, c, h, w]:
  videomae     no CLS; tubelet tokens (t, y, x)              pooled: fc_norm(mean) | mean | token 0
  vjepa2       no CLS; tubelet tokens (t, y, x)              pooled: attentive pooler | mean
  timesformer  CLS, then tokens (y, x, t) (divided space-time) pooled: final-LN CLS
  vivit        CLS, then tubelet tokens (t, y, x)            pooled: pooler (dense+tanh) | final-LN CLS
  xclip        per frame (cross-frame message tokens inside) pooled: post-LN CLS, mean over frames
Frames, input size and mean/std come from the folder's config.json and (video_)preprocessor_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stecache.backbones.base import Backbone, sha256_files, uniform_sampling
from stecache.backbones.image import read_preprocess
from stecache.errors import CheckpointMismatch

FAMILIES = {  # model_type -> the transformers classes accepted from config.json "architectures"
    "videomae": ("VideoMAEModel", "VideoMAEForVideoClassification"),
    "vjepa2": ("VJEPA2Model", "VJEPA2ForVideoClassification"),
    "timesformer": ("TimesformerModel", "TimesformerForVideoClassification"),
    "vivit": ("VivitModel", "VivitForVideoClassification"),
    "xclip_vision_model": ("XCLIPVisionModel",),
    "xclip": ("XCLIPModel",),
}


def _pair(v) -> int:
    return int(v if isinstance(v, int) else v[0])


class HFVideoEncoder(Backbone):
    """A transformers video model: [B, 3, T, H, W] -> [B, n, c, h, w] and its own pooled vector."""

    def __init__(self, model, name: str, frames: int | None, preprocess_dir: Path):
        """Wrap a loaded transformers `model` (see `build`); `preprocess_dir` holds its preprocessor json."""
        super().__init__()
        kind, arch = model.config.model_type, type(model).__name__
        self.kind, self.model = ("xclip" if kind.startswith("xclip") else kind), model
        cfg = model.config.vision_config if kind == "xclip" else model.config
        native, size, patch, tubelet = self._geometry(cfg)
        T = native if frames is None else frames
        if T % tubelet or (self.kind != "vjepa2" and T != native):  # V-JEPA 2 (RoPE) alone takes any T
            raise CheckpointMismatch(
                f"{name}: --frames {T} does not fit {arch}: its position/time embeddings are sized for "
                f"{native} frames (tubelet {tubelet})"
            )
        pre = read_preprocess(preprocess_dir, size)  # no json there: ImageNet mean/std at the model size
        self.name, self.frames, self.size, self.channels = name, T, size, cfg.hidden_size
        self.grid = (T // tubelet, size // patch, size // patch)
        self.config = {
            "family": "hf",
            "model_type": kind,
            "architecture": arch,
            "frames": T,
            "size": size,
            "patch": patch,
            "tubelet": tubelet,
            "width": cfg.hidden_size,
            "sampling": uniform_sampling(T),
            "preprocess": pre,
            "test_views": [1, 3],
            "feature_layer": "last hidden state (after the model's final norm, if any), CLS/register dropped",
        }

    def _geometry(self, cfg) -> tuple[int, int, int, int]:
        """(native frames, input size, patch, tubelet) of this family's config."""
        if self.kind == "vjepa2":
            return cfg.frames_per_clip, cfg.crop_size, cfg.patch_size, cfg.tubelet_size
        if self.kind == "vivit":
            t = cfg.tubelet_size
            return cfg.num_frames, _pair(cfg.image_size), int(t[1]), int(t[0])
        if self.kind == "videomae":
            return cfg.num_frames, _pair(cfg.image_size), _pair(cfg.patch_size), cfg.tubelet_size
        if self.kind == "timesformer":
            if cfg.attention_type != "divided_space_time":
                raise CheckpointMismatch(
                    f"TimeSformer attention_type {cfg.attention_type!r}: only divided_space_time"
                )
            return cfg.num_frames, _pair(cfg.image_size), _pair(cfg.patch_size), 1
        return cfg.num_frames, _pair(cfg.image_size), _pair(cfg.patch_size), 1  # xclip

    def _base(self):
        """The encoder inside a classification wrapper (or the model itself)."""
        m = self.model
        if self.kind == "xclip":
            return m.vision_model if hasattr(m, "text_model") else m
        return getattr(m, m.base_model_prefix, m)

    def _hidden(self, clips: torch.Tensor):
        """Run the encoder: [B, 3, T, H, W] -> its output object (last_hidden_state, maybe pooler_output)."""
        B, _, T, H, W = clips.shape
        x = clips.transpose(1, 2)  # [B, T, 3, H, W], what every transformers video model takes
        base = self._base()
        if self.kind == "vjepa2":
            return base(pixel_values_videos=x, skip_predictor=True)
        if self.kind == "xclip":
            return base(pixel_values=x.reshape(B * T, 3, H, W))  # row b*T + t
        return base(pixel_values=x)

    def _tokens_of(self, hidden: torch.Tensor, B: int) -> torch.Tensor:
        n, h, w = self.grid
        c = self.channels
        if self.kind in ("videomae", "vjepa2"):  # [B, n*h*w, c]
            return hidden.reshape(B, n, h, w, c).permute(0, 1, 4, 2, 3)
        if self.kind == "vivit":  # [B, 1 + n*h*w, c]
            return hidden[:, 1:].reshape(B, n, h, w, c).permute(0, 1, 4, 2, 3)
        if self.kind == "timesformer":  # [B, 1 + h*w*T, c], token 1 + (y*w + x)*T + t
            return hidden[:, 1:].reshape(B, h, w, n, c).permute(0, 3, 4, 1, 2)
        return hidden[:, 1:].reshape(B, n, h, w, c).permute(0, 1, 4, 2, 3)  # xclip [B*T, 1 + h*w, c]

    def _tokens(self, clips: torch.Tensor) -> torch.Tensor:
        return self._tokens_of(self._hidden(clips).last_hidden_state, len(clips))

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, B = self._hidden(clips), len(clips)
        hidden, m = out.last_hidden_state, self.model
        tokens = self._tokens_of(hidden, B)
        if self.kind == "videomae":
            if getattr(m, "fc_norm", None) is not None:  # VideoMAEForVideoClassification, mean pooling
                return tokens, m.fc_norm(hidden.mean(1))
            return tokens, hidden.mean(1) if m.config.use_mean_pooling else hidden[:, 0]
        if self.kind == "vjepa2":
            pooler = getattr(m, "pooler", None)
            return tokens, pooler(hidden) if pooler is not None else hidden.mean(1)
        if self.kind == "vivit":
            pool = getattr(out, "pooler_output", None)
            return tokens, pool if pool is not None else hidden[:, 0]
        if self.kind == "timesformer":
            return tokens, hidden[:, 0]
        return tokens, out.pooler_output.reshape(B, self.frames, -1).mean(1)  # xclip: per-frame CLS


def load_model(path: Path):
    """(model, weight files) saved in `path` (class from config.json), checked to load completely."""
    import transformers

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointMismatch(f"hf:{path}: no config.json there (save the model with save_pretrained)")
    raw = json.loads(cfg_file.read_text())
    kind = raw.get("model_type")
    if kind not in FAMILIES:
        raise CheckpointMismatch(
            f"hf:{path}: model_type {kind!r} is not a supported video encoder "
            f"({', '.join(sorted(FAMILIES))}); per-frame image encoders go by image:<dir>"
        )
    arch = (raw.get("architectures") or [FAMILIES[kind][0]])[0]
    if arch not in FAMILIES[kind]:
        raise CheckpointMismatch(f"hf:{path}: architecture {arch} not supported; expected {FAMILIES[kind]}")
    try:
        cls = getattr(transformers, arch)
    except (AttributeError, ImportError) as e:  # an older transformers (V-JEPA 2 needs >= 4.53)
        raise CheckpointMismatch(
            f"hf:{path}: transformers {transformers.__version__} has no {arch} ({type(e).__name__}); "
            "upgrade transformers"
        ) from e
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise CheckpointMismatch(f"hf:{path}: no *.safetensors or *.bin weights")
    kw = {"local_files_only": True, "output_loading_info": True}
    try:
        try:
            model, info = cls.from_pretrained(path, attn_implementation="sdpa", **kw)
        except (ValueError, ImportError):  # a class without SDPA support
            model, info = cls.from_pretrained(path, **kw)
    except (RuntimeError, OSError, ValueError) as e:  # mis-shaped weights, unreadable files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointMismatch(f"hf:{path}: weights do not fit {arch}: {first}") from e
    if info["missing_keys"] or info["mismatched_keys"]:
        raise CheckpointMismatch(
            f"hf:{path}: weights do not fit {arch}; missing keys: "
            f"{', '.join(sorted(info['missing_keys'])[:12])}; "
            f"wrong shapes: {sorted(map(str, info['mismatched_keys']))[:12]}"
        )
    return model.eval(), files


def build(path: str | Path, frames: int | None = None) -> HFVideoEncoder:
    """A video encoder from a local transformers directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointMismatch(f"hf:{path}: not a directory (expected a transformers save_pretrained dir)")
    model, files = load_model(path)
    enc = HFVideoEncoder(model, f"hf:{path}", frames, path)
    enc.checkpoint, enc.checkpoint_sha256 = str(path), sha256_files(files)
    return enc
