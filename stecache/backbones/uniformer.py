"""UniFormerV2 (CLIP ViT + global UniBlocks) in plain PyTorch, loading official and mmaction2 checkpoints.

Local blocks are CLIP ViT blocks (QuickGELU, packed q/k/v) run per frame over 1 + h*w tokens, with the
optional local MHRA (BN3d, 1x1x1, depthwise temporal, 1x1x1) of the SSv2 configs. Layers in `return_list`
feed the global UniBlocks: a depthwise 3x3x3 position conv on the patch tokens of a copy, then a learnable
query cross-attends over all T*(1+h*w) tokens. Pooled = LN((1-sigmoid(balance))*query + sigmoid(balance)*
mean_t frame CLS). Tokens = the last local block's patch tokens (no CLS, no norm) -> [B, t, c, h, w].
Parameter names follow mmaction2's `UniFormerV2` so both checkpoint layouts load with a rename only.
The architecture (width/depth/patch/size, local MHRA, temporal down-sampling, global blocks) is read from
the checkpoint's keys and shapes (`arch_from_state_dict`); the frame count T is free (weights do not
depend on T), native 8 (16 with temporal down-sampling, as every such model of the official zoo).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stecache.backbones.base import (
    Backbone,
    load_strict,
    read_state_dict,
    sha256_file,
    strip_prefixes,
    warn_random,
)
from stecache.errors import CheckpointMismatch

K400 = {"mean": [114.75, 114.75, 114.75], "std": [57.375, 57.375, 57.375]}  # 0.45 / 0.225, not CLIP's
BASE = {
    "family": "uniformerv2",
    "frames": 8,  # t_size: tied to the clip length (a mismatch silently splits clips upstream)
    "size": 224,
    "patch": 16,
    "width": 768,
    "layers": 12,
    "heads": 12,
    "temporal_downsample": False,
    "kernel_size": 3,
    "no_lmhra": True,
    "double_lmhra": True,
    "dw_reduction": 1.5,
    "return_list": [8, 9, 10, 11],
    "n_head": 12,
    "mlp_factor": 4.0,
    "sampling": {"rule": "uniform", "clip_len": 8, "frame_interval": 1, "num_clips": 1, "test_mode": True},
    "preprocess": {"short_side": 224, "crop_size": 224, "crop": "center", **K400},
    "test_views": [4, 3],
    "feature_layer": "local block 11 output, patch tokens without the frame CLS (no norm)",
}
TINY = {
    **BASE,
    "size": 64,
    "width": 64,
    "layers": 4,
    "heads": 2,
    "return_list": [2, 3],
    "n_head": 2,
    "preprocess": {**BASE["preprocess"], "short_side": 64, "crop_size": 64},
    "feature_layer": "local block 3 output, patch tokens without the frame CLS (no norm)",
}


HEADS = {768: 12, 1024: 16}  # B/16 and L/14 (head dim 64); the checkpoint holds no head count


def lmhra_width(c: int, reduction: float) -> int:
    """Inner width of a local MHRA, int(c // dw_reduction) as the official code computes it."""
    return int(c // reduction)


def arch_from_state_dict(sd: dict[str, torch.Tensor], cfg: dict) -> dict:
    """`cfg` with the architecture a (mmaction2-named, prefix-free) state dict implies.

    Read: width, patch, temporal down-sampling + kernel (conv1), input size (positional_embedding),
    depth (resblocks), local MHRA none/single/double + reduction, number of global blocks and their
    MLP factor. Not in the file: head counts (head dim 64 for B/L; `cfg`'s for other widths) and the
    layers the global blocks read, taken as the last n (every official config: [8..11], [4..11], [20..23]).
    Keys that are absent leave `cfg` as it is, so `check_keys` names what is missing.
    """
    conv, pos = sd.get("conv1.weight"), sd.get("positional_embedding")
    if conv is None or conv.ndim != 5 or pos is None or pos.ndim != 2:
        return cfg
    c, kt, p = conv.shape[0], conv.shape[2], conv.shape[-1]
    s = round((pos.shape[0] - 1) ** 0.5)
    layers = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.")), default=-1)
    n = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("transformer.dec.")), default=-1)
    heads = HEADS.get(c, cfg["heads"] if c == cfg["width"] else max(1, c // 64))
    out = cfg | {"width": c, "patch": p, "size": s * p, "layers": layers or cfg["layers"]}
    out |= {
        "heads": heads,
        "n_head": heads,
        "temporal_downsample": kt > 1,
        "kernel_size": kt if kt > 1 else 3,
    }
    out |= {
        "no_lmhra": not any(".lmhra1." in k for k in sd),
        "double_lmhra": any(".lmhra2." in k for k in sd),
    }
    inner = sd.get("transformer.resblocks.0.lmhra1.pos_embed.1.weight")
    if inner is not None:  # the reduction that gives this inner width (1.5 in every official config)
        r = inner.shape[0]
        out["dw_reduction"] = next((d for d in (1.5, 2.0, 1.0, 3.0, 4.0) if lmhra_width(c, d) == r), c / r)
    if n:
        out["return_list"] = list(range(out["layers"] - n, out["layers"]))
        out["frozen"] = "transformer.balance" not in sd  # zoo frozen-backbone models: LN(query) only
    fc = sd.get("transformer.dec.0.mlp.c_fc.weight")
    if fc is not None:
        out["mlp_factor"] = fc.shape[0] / c
    if out["temporal_downsample"] and not cfg["temporal_downsample"]:
        out["frames"] = 16  # native T of every down-sampling model in the official zoo (f16 / f32)
    if (out["size"], out["width"]) != (cfg["size"], cfg["width"]):
        out["preprocess"] = {**cfg["preprocess"], "short_side": out["size"], "crop_size": out["size"]}
    last = out["layers"] - 1
    out["feature_layer"] = f"local block {last} output, patch tokens without the frame CLS (no norm)"
    return out


def with_frames(cfg: dict, frames: int | None) -> dict:
    """`cfg` at T frames (None: the native T); T must be even when time is down-sampled."""
    frames = cfg["frames"] if frames is None else frames
    if frames < 1 or (cfg["temporal_downsample"] and frames % 2):
        raise CheckpointMismatch(
            f"--frames {frames}: this UniFormerV2 halves time in its patch embedding; use an even T >= 2"
        )
    return cfg | {"frames": frames, "sampling": {**cfg["sampling"], "clip_len": frames}}


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter names, batch-first, SDPA."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * c, c)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * c))
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, Lq, c] attends over kv [B, Lk, c] (self-attention when kv is None) -> [B, Lq, c]."""
        c, w, b = x.shape[-1], self.in_proj_weight, self.in_proj_bias
        if kv is None:
            q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
        else:
            q = F.linear(x, w[:c], b[:c])
            k, v = F.linear(kv, w[c:], b[c:]).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B, heads, L, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


def mlp(c: int, hidden: int, dropout: bool = False) -> nn.Sequential:
    """CLIP MLP: c_fc -> QuickGELU (-> Dropout, identity frozen) -> c_proj."""
    layers = [("c_fc", nn.Linear(c, hidden)), ("gelu", QuickGELU())]
    layers += [("dropout", nn.Dropout(0.5))] if dropout else []
    return nn.Sequential(OrderedDict([*layers, ("c_proj", nn.Linear(hidden, c))]))


class LocalMHRA(nn.Module):
    """Local temporal relation: BN3d -> 1x1x1 (c->c/r) -> depthwise (3,1,1) -> 1x1x1 (c/r->c)."""

    def __init__(self, c: int, reduction: float):
        super().__init__()
        r = lmhra_width(c, reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(c),
            nn.Conv3d(c, r, 1),
            nn.Conv3d(r, r, (3, 1, 1), padding=(1, 0, 0), groups=r),
            nn.Conv3d(r, c, 1),
        )

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:  # [N*t, 1+h*w, c], patch tokens += MHRA
        nt, L, c = x.shape
        s = int((L - 1) ** 0.5)
        p = x[:, 1:].reshape(nt // t, t, s, s, c).permute(0, 4, 1, 2, 3)  # [N, c, t, h, w]
        p = (p + self.pos_embed(p)).permute(0, 2, 3, 4, 1).reshape(nt, L - 1, c)
        return torch.cat([x[:, :1], p], dim=1)


class LocalBlock(nn.Module):
    """CLIP ViT block applied per frame, with optional local MHRA before / after attention."""

    def __init__(self, c: int, heads: int, lmhra: bool, double: bool, reduction: float):
        super().__init__()
        self.attn, self.ln_1, self.ln_2 = Attention(c, heads), nn.LayerNorm(c), nn.LayerNorm(c)
        self.mlp = mlp(c, 4 * c)
        self.lmhra1 = LocalMHRA(c, reduction) if lmhra else None
        self.lmhra2 = LocalMHRA(c, reduction) if lmhra and double else None

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:  # [N*t, 1+h*w, c]
        if self.lmhra1 is not None:
            x = self.lmhra1(x, t)
        x = x + self.attn(self.ln_1(x))
        if self.lmhra2 is not None:
            x = self.lmhra2(x, t)
        return x + self.mlp(self.ln_2(x))


class GlobalBlock(nn.Module):
    """UniFormerV2 `Extractor`: a query [N, 1, c] cross-attends over tokens [N, t*(1+h*w), c]."""

    def __init__(self, c: int, heads: int, mlp_factor: float):
        super().__init__()
        self.attn = Attention(c, heads)
        self.ln_1, self.ln_2, self.ln_3 = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        self.mlp = mlp(c, round(mlp_factor * c), dropout=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.ln_1(q), self.ln_3(kv))
        return q + self.mlp(self.ln_2(q))


class Transformer(nn.Module):
    """Local blocks + global blocks + fusion; holds the mmaction2 `transformer.*` parameters."""

    def __init__(self, cfg: dict):
        super().__init__()
        c, n = cfg["width"], len(cfg["return_list"])
        lm = not cfg["no_lmhra"]
        self.resblocks = nn.ModuleList(
            LocalBlock(c, cfg["heads"], lm, cfg["double_lmhra"], cfg["dw_reduction"])
            for _ in range(cfg["layers"])
        )
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.dpe = nn.ModuleList(nn.Conv3d(c, c, 3, padding=1, groups=c) for _ in range(n))
        self.dec = nn.ModuleList(GlobalBlock(c, cfg["n_head"], cfg["mlp_factor"]) for _ in range(n))
        self.norm = nn.LayerNorm(c)
        # the zoo's "frozen" models (frozen_k710_l14_f8x336, ...) have no balance: pooled = LN(query)
        self.balance = None if cfg.get("frozen") else nn.Parameter(torch.zeros(c))


class UniFormerV2(Backbone):
    """UniFormerV2 video encoder; parameter names as mmaction2 `UniFormerV2` (prefix `backbone.` stripped)."""

    def __init__(self, name: str, cfg: dict):
        super().__init__()
        self.name, self.config = name, cfg
        c, p, s = cfg["width"], cfg["patch"], cfg["size"] // cfg["patch"]
        self.frames, self.size, self.channels = cfg["frames"], cfg["size"], c
        self.grid = (cfg["frames"] // 2 if cfg["temporal_downsample"] else cfg["frames"], s, s)
        if cfg["temporal_downsample"]:
            k = cfg["kernel_size"]
            self.conv1 = nn.Conv3d(3, c, (k, p, p), (2, p, p), ((k - 1) // 2, 0, 0), bias=False)
        else:
            self.conv1 = nn.Conv3d(3, c, (1, p, p), (1, p, p), bias=False)
        self.class_embedding = nn.Parameter(c**-0.5 * torch.randn(c))
        self.positional_embedding = nn.Parameter(c**-0.5 * torch.randn(s * s + 1, c))
        self.ln_pre = nn.LayerNorm(c)
        self.transformer = Transformer(cfg)
        self.return_list = list(cfg["return_list"])

    def _run_blocks(self, clips: torch.Tensor, pooled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        tr = self.transformer
        x = self.conv1(clips)  # [N, c, t, h, w]
        N, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(N * t, h * w, c)  # row n*t + i, token y*w + x
        x = torch.cat([self.class_embedding.expand(N * t, 1, c), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)  # [N*t, 1+h*w, c]
        query = tr.temporal_cls_token.expand(N, 1, c)
        for i, block in enumerate(tr.resblocks):
            x = block(x, t)
            if pooled and i in self.return_list:
                j = self.return_list.index(i)
                frames = x.view(N, t, 1 + h * w, c)
                patches = frames[:, :, 1:].reshape(N, t, h, w, c).permute(0, 4, 1, 2, 3)  # [N, c, t, h, w]
                pos = tr.dpe[j](patches).permute(0, 2, 3, 4, 1).reshape(N, t, h * w, c)
                kv = torch.cat([frames[:, :, :1], frames[:, :, 1:] + pos], dim=2).reshape(
                    N, t * (1 + h * w), c
                )
                query = tr.dec[j](query, kv)
        tokens = x[:, 1:].reshape(N, t, h, w, c).permute(0, 1, 4, 2, 3)  # [N, t, c, h, w]
        if not pooled:
            return tokens, None
        if tr.balance is None:
            return tokens, tr.norm(query[:, 0])
        weight = torch.sigmoid(tr.balance)
        frame_cls = x[:, 0].reshape(N, t, c).mean(1)  # [N, c]
        return tokens, tr.norm((1 - weight) * query[:, 0] + weight * frame_cls)

    def _tokens(self, clips: torch.Tensor) -> torch.Tensor:
        return self._run_blocks(clips, pooled=False)[0]

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run_blocks(clips, pooled=True)

    def load_checkpoint(self, path: Path, sd: dict[str, torch.Tensor] | None = None) -> None:
        """Official `.pyth` (flat or `model_state`, `backbone.` keys) or mmaction2 (`state_dict`) layout."""
        load_strict(self, read_checkpoint(path) if sd is None else sd, path)
        self.checkpoint, self.checkpoint_sha256 = str(path), sha256_file(path)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict of a checkpoint file, in mmaction2 names without prefixes or classifier."""
    sd = {}
    for k, v in strip_prefixes(read_state_dict(path)).items():
        if k.startswith(("cls_head.", "transformer.proj.2.")):  # classifier: mmaction2 / official
            continue
        sd[k.replace("transformer.proj.0.", "transformer.norm.")] = v  # official LN before the head
    return sd


def build(cfg: dict, name: str, checkpoint: Path | None, frames: int | None = None) -> UniFormerV2:
    """UniFormerV2 with the checkpoint's architecture at T frames; random weights (loudly) if None."""
    if checkpoint is None:
        model = UniFormerV2(name, with_frames(cfg, frames))
        warn_random(name)
        return model
    if Path(checkpoint).is_dir():
        raise CheckpointMismatch(
            f"checkpoint {checkpoint}: UniFormerV2 needs a file (.pyth/.pth), not a directory"
        )
    sd = read_checkpoint(Path(checkpoint))
    model = UniFormerV2(name, with_frames(arch_from_state_dict(sd, cfg), frames))
    model.load_checkpoint(Path(checkpoint), sd)
    return model
