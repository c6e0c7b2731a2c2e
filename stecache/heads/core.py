"""The paper's heads over cached token maps: meanFC, Tr_head, STE_head and the ablation variants.

Every head maps features [B, n, c, h, w] to logits [B, K] and is built from the cache's feature shape:
`build_head("ste", feature_shape=(8, 768, 14, 14), num_classes=26, depth=1)`. The math is eq. 1–4 of the
paper (STEb, patch_base_classifier); where the paper is silent the transformer-standard choice is taken
and exposed as a named option. STE blocks run a fused form by default (the temporal convs merged into one
kernel with the identity terms folded in; channels-last layout on CUDA only — on CPU the merged kernel
without it measured faster, 1.30× vs 1.16× over the literal form); `fused=False, channels_last=False` is
the literal formulation, and tests prove the two equal. On CUDA, heads run under bf16 autocast.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HeadConfigError

MAX_DEPTH = 32  # a sanity bound; the paper sweeps depth 0–4
PATCH_TARGET = (2, 7, 7)  # default patch at the 8×14×14 grid: 4 temporal × 2×2 spatial = 16 patches


def default_patch(grid: tuple[int, int, int], target: tuple[int, int, int] = PATCH_TARGET) -> tuple:
    """Per axis, the largest divisor of the grid size that is ≤ the target: always tiles the grid."""
    return tuple(max(d for d in range(1, t + 1) if g % d == 0) for g, t in zip(grid, target, strict=True))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


def _init(module: nn.Module, std: float) -> None:
    """trunc_normal(std) weights and zero biases for every Linear/Conv; LayerNorm stays (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv3d):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MeanFC(nn.Module):
    """mean over (n, h, w) → LayerNorm(eps 1e-6) → Dropout → Linear: the VideoMAE(v2) classifier.

    dropout defaults to 0.5 as in mmaction2's heads for both backbones (the paper trains with mmaction2).
    """

    def __init__(self, c: int, num_classes: int, dropout: float = 0.5, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, K]
        return self.fc(self.drop(self.norm(x.mean((2, 3, 4)))))


class PatchClassifier(nn.Module):
    """patch_base_classifier (eq. 4): Conv3d c→K, kernel = stride = patch, then mean over the N patches."""

    def __init__(self, c: int, num_classes: int, patch: tuple[int, int, int]):
        super().__init__()
        self.conv = nn.Conv3d(c, num_classes, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, K]
        return self.conv(x).flatten(2).mean(2)  # [B, K, N] -> [B, K]


class STEBlock(nn.Module):
    """STEb, eq. 1–3: x1' = SE(x0 + TI(x0)), TI(x0) = x0 + Σ_k conv_{k×1×1}(x0); x1 = x1' + MLP(x1').

    Eq. 2 is taken literally: x0 + TI(x0) = 2·x0 + Σ_k conv_k(x0) (the identity appears twice; we keep it).
    Paper-silent choices (transformer-standard, all options): every conv has a bias and "same" zero padding;
    SE is one c→c 3×3 conv per frame; MLP = Linear(c, 4c) → GELU → Dropout(drop) → Linear(4c, c) →
    Dropout(drop) with a pre-norm LayerNorm(eps 1e-6) (`mlp_norm`), drop-path on its residual; no norm
    before TI/SE, so eq. 1–2 hold as written. `fused` computes eq. 1–2 as ONE conv whose kernel is built
    each forward from the separate parameters (zero-pad each to the longest kernel, sum, add 2·I at the
    centre tap when `fold_identity`, except under autocast), so gradients still reach every kernel.
    """

    def __init__(
        self,
        c: int,
        ti_kernels: tuple[int, ...] = (3, 5, 7),
        se_kernel: int = 3,
        mlp_ratio: float = 4.0,
        mlp_norm: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        fused: bool = True,
        fold_identity: bool = True,
    ):
        super().__init__()
        self.ti = nn.ModuleList(nn.Conv3d(c, c, (k, 1, 1), padding=(k // 2, 0, 0)) for k in ti_kernels)
        self.se = nn.Conv2d(c, c, se_kernel, padding=se_kernel // 2)
        self.norm = nn.LayerNorm(c, eps=eps) if mlp_norm else nn.Identity()
        self.fc1 = nn.Linear(c, int(mlp_ratio * c))
        self.fc2 = nn.Linear(int(mlp_ratio * c), c)
        self.drop, self.drop_path = nn.Dropout(drop), drop_path
        self.fused, self.fold_identity = fused, fold_identity

    def merged_kernel(self, fold_identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One [c, c, kmax, 1, 1] kernel + bias equal to Σ_k conv_k (+ 2·identity at the centre tap)."""
        kmax = max(conv.kernel_size[0] for conv in self.ti)
        weight = 0
        for conv in self.ti:
            p = (kmax - conv.kernel_size[0]) // 2
            weight = weight + F.pad(conv.weight, (0, 0, 0, 0, p, p))  # zero taps at both ends
        if fold_identity:
            weight[:, :, kmax // 2, 0, 0].diagonal().add_(2.0)
        return weight, sum(conv.bias for conv in self.ti)

    def temporal(self, x: torch.Tensor) -> torch.Tensor:  # x0 + TI(x0): [B, c, n, h, w] -> same
        if not self.fused:
            ti = x + sum(conv(x) for conv in self.ti)  # eq. 1
            return x + ti  # the argument of SE in eq. 2
        # under autocast the kernel is cast to bf16, where 2 + w would swamp the small diagonal weights
        dev = x.device.type
        fold = self.fold_identity and not (dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev))
        weight, bias = self.merged_kernel(fold)
        y = F.conv3d(x, weight, bias, padding=(weight.shape[2] // 2, 0, 0))
        return y if fold else y + 2 * x

    def spatial(self, x: torch.Tensor) -> torch.Tensor:  # SE per frame: [B, c, n, h, w] -> same
        B, c, n, h, w = x.shape
        frames = x.transpose(1, 2).reshape(B * n, c, h, w)  # a view when x is channels-last-3d
        return self.se(frames).reshape(B, n, c, h, w).transpose(1, 2)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:  # per token: [B, c, n, h, w] -> same
        t = x.permute(0, 2, 3, 4, 1)  # [B, n, h, w, c]
        t = self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm(t))))))
        return t.permute(0, 4, 1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, c, n, h, w]
        x1 = self.spatial(self.temporal(x))  # eq. 1–2
        return x1 + drop_path(self.mlp(x1), self.drop_path, self.training)  # eq. 3


class TrBlock(nn.Module):
    """Pre-norm transformer encoder block over tokens: x + Attn(LN(x)), x + MLP(LN(x)); SDPA attention."""

    def __init__(self, c: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6):  # fmt: skip
        super().__init__()
        self.num_heads, self.attn_drop, self.drop_path = num_heads, attn_drop, drop_path
        self.norm1, self.norm2 = nn.LayerNorm(c, eps=eps), nn.LayerNorm(c, eps=eps)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc1, self.fc2 = nn.Linear(c, int(mlp_ratio * c)), nn.Linear(int(mlp_ratio * c), c)
        self.drop = nn.Dropout(drop)

    def attention(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, c] -> [B, L, c]
        B, L, c = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.drop(self.proj(a.transpose(1, 2).reshape(B, L, c)))  # [B, H, L, D] -> [B, L, c]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, c] -> [B, L, c]
        x = x + drop_path(self.attention(self.norm1(x)), self.drop_path, self.training)
        mlp = self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))
        return x + drop_path(mlp, self.drop_path, self.training)


def sincos_table(length: int, c: int) -> torch.Tensor:
    """The 1-D sinusoid table of VideoMAE over flattened tokens, computed in float64: [length, c]."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    angle = pos / torch.pow(10000.0, 2 * (torch.arange(c, dtype=torch.float64) // 2) / c)
    table = torch.where(torch.arange(c) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class _Head(nn.Module):
    """Shared plumbing: input check, CUDA bf16 autocast, `blocks_output` for the Fig. 1 heat maps."""

    depths = range(0, 1)
    classifier: nn.Module

    def _setup(self, feature_shape, num_classes: int, depth: int, autocast: bool) -> None:
        self.feature_shape, self.num_classes, self.depth = tuple(feature_shape), num_classes, depth
        self.autocast = autocast

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, c, h, w] -> [B, c, n, h, w] after blocks
        return x.transpose(1, 2)

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[1:]) != self.feature_shape:
            raise HeadConfigError(
                f"features of shape {list(x.shape)} do not fit this head, built for "
                f"[B, {', '.join(map(str, self.feature_shape))}] (n, c, h, w)"
            )
        return x

    def _autocast(self, x: torch.Tensor):
        if self.autocast and x.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, c, h, w] -> [B, K] float32
        with self._autocast(x):
            return self.classifier(self.features(self._checked(x))).float()

    def blocks_output(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, c, h, w] -> [B, n, c, h, w]
        """The token map after the head's blocks (identity when it has none), for correlation heat maps."""
        with self._autocast(x):
            return self.features(self._checked(x)).transpose(1, 2).float().contiguous()


class MeanFCHead(_Head):
    """`meanfc`: mean over (n, h, w) → LayerNorm → Dropout → Linear (the VideoMAE classifier); no depth."""

    def __init__(self, feature_shape, num_classes: int, depth: int = 0, dropout: float = 0.5,
                 eps: float = 1e-6, init_std: float = 0.02, autocast: bool = True):  # fmt: skip
        super().__init__()
        self._setup(feature_shape, num_classes, depth, autocast)
        self.classifier = MeanFC(feature_shape[1], num_classes, dropout, eps)
        _init(self, init_std)


class STEHead(_Head):
    """`ste`: depth × STEBlock → patch_base_classifier (STE_head; depth 0 = the classifier alone).

    Options: `patch` (default: `default_patch(grid)`, (2, 7, 7) at 8×14×14 — 16 patches of 4 frames × a
    quadrant, local yet person-sized; smaller grids take the largest divisor ≤ (2, 7, 7) per axis), STEBlock
    options (`ti_kernels`, `se_kernel`, `mlp_ratio`, `mlp_norm`, `drop`, `drop_path`, `eps`, `fused`,
    `fold_identity`), `channels_last` (run blocks in channels_last_3d; default None = the layout measured
    fastest on the input's device: contiguous on CPU (BENCHMARKS.md, Heads), channels-last on CUDA),
    `init_std` (trunc_normal std);
    `dropout` is meanFC's and used by `stemean` only.
    """

    depths = range(0, MAX_DEPTH + 1)
    pooling = "patch"

    def __init__(self, feature_shape, num_classes: int, depth: int = 1, patch=None, dropout: float = 0.5,
                 ti_kernels=(3, 5, 7), se_kernel: int = 3, mlp_ratio: float = 4.0, mlp_norm: bool = True,
                 drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6, fused: bool = True,
                 fold_identity: bool = True, channels_last: bool | None = None, init_std: float = 0.02,
                 autocast: bool = True):  # fmt: skip
        super().__init__()
        self._setup(feature_shape, num_classes, depth, autocast)
        n, c, h, w = feature_shape
        kernels = (*ti_kernels, se_kernel)
        if not ti_kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise HeadConfigError(f"ti_kernels {tuple(ti_kernels)} and se_kernel {se_kernel} must be odd")
        block = dict(ti_kernels=tuple(ti_kernels), se_kernel=se_kernel, mlp_ratio=mlp_ratio,
                     mlp_norm=mlp_norm, drop=drop, drop_path=drop_path, eps=eps, fused=fused,
                     fold_identity=fold_identity)  # fmt: skip
        self.blocks = nn.ModuleList(STEBlock(c, **block) for _ in range(depth))
        self.channels_last = channels_last
        if self.pooling == "mean":
            if patch is not None:
                raise HeadConfigError("option patch is for the ste/patch heads; stemean pools by mean")
            self.classifier = MeanFC(c, num_classes, dropout, eps)
        else:
            self.patch = tuple(patch) if patch is not None else default_patch((n, h, w))
            grid = (n, h, w)
            if len(self.patch) != 3 or any(p < 1 or g % p for p, g in zip(self.patch, grid, strict=True)):
                raise HeadConfigError(f"patch {self.patch} does not tile the n×h×w = {n}×{h}×{w} grid")
            self.classifier = PatchClassifier(c, num_classes, self.patch)
        _init(self, init_std)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, c, h, w] -> [B, c, n, h, w]
        x = x.transpose(1, 2)
        if self.blocks:
            cl = x.is_cuda if self.channels_last is None else self.channels_last
            fmt = torch.channels_last_3d if cl else torch.contiguous_format
            x = x.contiguous(memory_format=fmt)
        for block in self.blocks:
            x = block(x)
        return x


class STEMeanHead(STEHead):
    """`stemean`: depth × STEBlock → meanFC (paper Table II); options as `ste` plus meanFC's `dropout`."""

    depths = range(1, MAX_DEPTH + 1)
    pooling = "mean"


class PatchHead(STEHead):
    """`patch`: patch_base_classifier alone (Table II) — exactly `ste` at depth 0."""

    depths = range(0, 1)

    def __init__(self, feature_shape, num_classes: int, depth: int = 0, **options):
        super().__init__(feature_shape, num_classes, depth, **options)


class TrHead(_Head):
    """`tr`: depth × pre-norm self-attention block over the n·h·w tokens → meanFC (Tr_head).

    Options: `num_heads` (default c/64 as in ViT: the largest divisor of c ≤ c/64, at least 1), `pos`
    position encoding added once before the blocks ("learned" trunc_normal(0.02) table — default;
    "sincos" fixed VideoMAE table; "none"), `mlp_ratio` 4, `drop`/`attn_drop`/`drop_path` 0, `dropout`
    (meanFC), `eps` 1e-6, `init_std`.
    """

    depths = range(1, MAX_DEPTH + 1)

    def __init__(self, feature_shape, num_classes: int, depth: int = 1, num_heads: int | None = None,
                 pos: str = "learned", mlp_ratio: float = 4.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, dropout: float = 0.5, eps: float = 1e-6, init_std: float = 0.02,
                 autocast: bool = True):  # fmt: skip
        super().__init__()
        self._setup(feature_shape, num_classes, depth, autocast)
        n, c, h, w = feature_shape
        num_heads = num_heads or max(d for d in range(1, max(1, c // 64) + 1) if c % d == 0)
        if c % num_heads:
            raise HeadConfigError(f"num_heads {num_heads} does not divide the {c} channels")
        if pos not in ("learned", "sincos", "none"):
            raise HeadConfigError(f"pos {pos!r} is not one of learned, sincos, none")
        L = n * h * w
        if pos == "learned":
            self.pos = nn.Parameter(torch.zeros(1, L, c))
            nn.init.trunc_normal_(self.pos, std=init_std, a=-2 * init_std, b=2 * init_std)
        else:
            self.register_buffer("pos", sincos_table(L, c)[None] if pos == "sincos" else torch.zeros(1, L, c))
        self.blocks = nn.ModuleList(
            TrBlock(c, num_heads, mlp_ratio, drop, attn_drop, drop_path, eps) for _ in range(depth)
        )
        self.classifier = MeanFC(c, num_classes, dropout, eps)
        _init(self, init_std)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, c, h, w] -> [B, c, n, h, w]
        B, n, c, h, w = x.shape
        t = x.permute(0, 1, 3, 4, 2).reshape(B, n * h * w, c) + self.pos  # [B, L, c], L = n·h·w
        for block in self.blocks:
            t = block(t)
        return t.view(B, n, h, w, c).permute(0, 4, 1, 2, 3)
