"""Today's frozen-encoder probes, for the same table as STE: `linear`, `attentive`/`vjepa2` and `ep`.

- `linear` — the MAE linear probe (He et al., main_linprobe.py): mean over (n, h, w) → BatchNorm1d
  without affine (eps 1e-6; batch statistics in training, running statistics in eval) → Linear, the
  weight trunc_normal(std 0.01), bias 0.
- `attentive` — the attentive probe of V-JEPA / V-JEPA 2 (facebookresearch/jepa, vjepa2:
  src/models/attentive_pooler.py): (depth − 1) pre-norm self-attention blocks over the n·h·w tokens, then
  one cross-attention block in which `num_queries` learnable query tokens (trunc_normal 0.02) attend to
  LayerNorm(tokens): q ← q + MHA(W_q q, W_kv LN1(x)) (no output projection, biases on), then q ← q +
  MLP(LN2(q)); the queries are averaged (V-JEPA's classifier has one query, then the mean is a no-op)
  and a Linear maps them to K logits. Init as the reference: trunc_normal(init_std) Linear weights, zero
  biases, LayerNorm (1, 0) with eps 1e-5 (nn.LayerNorm's default there); the self-attention blocks'
  proj/fc2 and the cross block's fc2 divided by √(2·layer_id) as `_rescale_blocks` does. No position
  encoding (the cached tokens already carry the encoder's). `num_heads` defaults to c/64 (ViT's).
- `vjepa2` — V-JEPA 2's evaluation config (configs/eval/vitl/*.yaml: num_heads 16, num_probe_blocks 4):
  `attentive` at depth 4 with 16 heads, one query.
- `ep` — efficient probing (Psomas et al. 2025, billpsomas/efficient-probing poolings/ep.py): M learnable
  queries Q [M, c] (randn·0.02) attend to the RAW tokens (no key projection, one head, scale c^-½); the
  values are ONE projection V = x W_v [N, c/d_out] (no bias) split into M chunks of c/(d_out·M) channels;
  query m pools chunk m: z_m = softmax(q_m xᵀ / √c) V_m, and z = concat_m z_m [c/d_out] → BatchNorm1d
  without affine (the MAE linear-probe head the EP code builds on) → Linear. Defaults: d_out 1 and M = 32,
  or the largest divisor of c/d_out ≤ 32 when 32 does not divide it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HeadConfigError
from .core import MAX_DEPTH, TrBlock, _Head, _init


def _num_heads(c: int, num_heads: int | None) -> int:
    num_heads = num_heads or max(d for d in range(1, max(1, c // 64) + 1) if c % d == 0)
    if c % num_heads:
        raise HeadConfigError(f"num_heads {num_heads} does not divide the {c} channels")
    return num_heads


def _tokens(x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, L, c], L = n·h·w in (n, h, w) order
    return x.flatten(2).transpose(1, 2)


class LinearHead(_Head):
    """`linear`: mean over (n, h, w) → BatchNorm1d(c, affine=False, eps 1e-6) → Linear (MAE linear probe)."""

    def __init__(self, feature_shape, num_classes: int, depth: int = 0, eps: float = 1e-6,
                 init_std: float = 0.01, autocast: bool = True):  # fmt: skip
        super().__init__()
        self._setup(feature_shape, num_classes, depth, autocast)
        c = feature_shape[1]
        norm = _BatchNorm(c, affine=False, eps=eps)
        self.classifier = nn.Sequential(_MeanPool(), norm, nn.Linear(c, num_classes))
        _init(self, init_std)


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that normalises a 1-clip training batch with the running statistics (no batch std)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        return super().forward(x)


class _MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, c]
        return x.mean((2, 3, 4))


class CrossAttentionBlock(nn.Module):
    """V-JEPA's cross-attention block: q + MHA(W_q q, W_k LN1(x), W_v LN1(x)), then + MLP(LN2(q))."""

    def __init__(self, c: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5):
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(c, eps=eps), nn.LayerNorm(c, eps=eps)
        self.q, self.kv = nn.Linear(c, c), nn.Linear(c, 2 * c)
        self.fc1, self.fc2 = nn.Linear(c, int(mlp_ratio * c)), nn.Linear(int(mlp_ratio * c), c)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # [B, M, c], [B, L, c] -> [B, M, c]
        B, M, c = q.shape
        L, H = x.shape[1], self.num_heads
        qh = self.q(q).view(B, M, H, c // H).transpose(1, 2)  # [B, H, M, D]
        k, v = self.kv(self.norm1(x)).view(B, L, 2, H, c // H).permute(2, 0, 3, 1, 4)  # [B, H, L, D] each
        q = q + F.scaled_dot_product_attention(qh, k, v).transpose(1, 2).reshape(B, M, c)
        return q + self.fc2(F.gelu(self.fc1(self.norm2(q))))


class _AttentivePool(nn.Module):
    """Queries → cross-attention block over the tokens → mean over queries → Linear."""

    def __init__(
        self, c: int, num_classes: int, num_heads: int, num_queries: int, mlp_ratio: float, eps: float
    ):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, num_queries, c))
        self.block = CrossAttentionBlock(c, num_heads, mlp_ratio, eps)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, K]
        t = _tokens(x)
        q = self.block(self.query.expand(len(t), -1, -1), t)
        return self.fc(q.mean(1))


class AttentiveHead(_Head):
    """`attentive`: (depth − 1) self-attention blocks → cross-attention with learnable queries → Linear.

    Options: `num_queries` (1), `num_heads` (c/64), `mlp_ratio` (4), `eps` (1e-5), `init_std` (0.02).
    """

    depths = range(1, MAX_DEPTH + 1)

    def __init__(self, feature_shape, num_classes: int, depth: int = 1, num_queries: int = 1,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, eps: float = 1e-5,
                 init_std: float = 0.02, autocast: bool = True):  # fmt: skip
        super().__init__()
        self._setup(feature_shape, num_classes, depth, autocast)
        c = feature_shape[1]
        num_heads = _num_heads(c, num_heads)
        if not isinstance(num_queries, int) or isinstance(num_queries, bool) or num_queries < 1:
            raise HeadConfigError(f"num_queries must be a positive integer, not {num_queries!r}")
        self.blocks = nn.ModuleList(TrBlock(c, num_heads, mlp_ratio, eps=eps) for _ in range(depth - 1))
        self.classifier = _AttentivePool(c, num_classes, num_heads, num_queries, mlp_ratio, eps)
        _init(self, init_std)
        nn.init.trunc_normal_(self.classifier.query, std=init_std, a=-2 * init_std, b=2 * init_std)
        with torch.no_grad():  # the reference's _rescale_blocks (the cross block shares the last block's id)
            layer_id = 0
            for layer_id, blk in enumerate(self.blocks):
                blk.proj.weight.div_(math.sqrt(2.0 * (layer_id + 1)))
                blk.fc2.weight.div_(math.sqrt(2.0 * (layer_id + 1)))
            self.classifier.block.fc2.weight.div_(math.sqrt(2.0 * (layer_id + 1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, c, h, w] -> [B, c, n, h, w]
        B, n, c, h, w = x.shape
        t = x.permute(0, 1, 3, 4, 2).reshape(B, n * h * w, c)
        for block in self.blocks:
            t = block(t)
        return t.view(B, n, h, w, c).permute(0, 4, 1, 2, 3)


class VJEPA2Head(AttentiveHead):
    """`vjepa2`: V-JEPA 2's probe config: `attentive` at depth 4 with 16 heads and one query.

    On a cache whose c is not a multiple of 16: the largest divisor of c ≤ 16 heads."""

    depths = range(4, 5)

    def __init__(
        self, feature_shape, num_classes: int, depth: int = 4, num_heads: int | None = None, **options
    ):
        c = feature_shape[1]
        num_heads = num_heads or max(d for d in range(1, 17) if c % d == 0)
        super().__init__(feature_shape, num_classes, depth, num_heads=num_heads, **options)


class EfficientProbe(nn.Module):
    """EP pooling: M queries on the raw tokens, one value projection split into M chunks, concat."""

    def __init__(self, c: int, num_queries: int, d_out: int = 1):
        super().__init__()
        if c % d_out or (c // d_out) % num_queries:
            raise HeadConfigError(f"ep: c/d_out = {c}/{d_out} must be divisible by num_queries {num_queries}")
        self.num_queries, self.scale = num_queries, c**-0.5
        self.query = nn.Parameter(torch.randn(1, num_queries, c) * 0.02)
        self.v = nn.Linear(c, c // d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c, n, h, w] -> [B, c/d_out]
        t = _tokens(x)  # [B, N, c]
        B, N, _ = t.shape
        attn = torch.softmax(self.query * self.scale @ t.transpose(1, 2), -1)  # [B, M, N]
        v = self.v(t).view(B, N, self.num_queries, -1).transpose(1, 2)  # [B, M, N, c/(d_out·M)]
        return (attn.unsqueeze(2) @ v).reshape(B, -1)  # [B, M, 1, ·] -> [B, c/d_out]


class EPHead(_Head):
    """`ep`: efficient probing → BatchNorm1d(affine=False, eps 1e-6) → Linear; options num_queries, d_out."""

    def __init__(self, feature_shape, num_classes: int, depth: int = 0, num_queries: int | None = None,
                 d_out: int = 1, eps: float = 1e-6, init_std: float = 0.02,
                 autocast: bool = True):  # fmt: skip
        super().__init__()
        self._setup(feature_shape, num_classes, depth, autocast)
        c = feature_shape[1]
        if not isinstance(d_out, int) or isinstance(d_out, bool) or d_out < 1 or c % d_out:
            raise HeadConfigError(f"ep: d_out {d_out!r} must be a positive divisor of c = {c}")
        m = num_queries or max(q for q in range(1, 33) if (c // d_out) % q == 0)
        pool = EfficientProbe(c, m, d_out)
        self.classifier = nn.Sequential(pool, _BatchNorm(c // d_out, affine=False, eps=eps),
                                        nn.Linear(c // d_out, num_classes))  # fmt: skip
        _init(self, init_std)  # the Linears; the queries keep EP's randn·0.02
