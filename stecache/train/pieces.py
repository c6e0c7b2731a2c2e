"""What one training step and one epoch are made of, shared by `train.loop` and the sweep (`sweep.py`): the
seeded head, AdamW with its parameter groups, the summed loss, the epoch's batches, predictions averaged
over views, and the checks that stop a run (non-finite loss, classes without training clips).

Python: `loss_fn(make_head(cfg, cache)(x), y, multi_label=False)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as D
from ..errors import NonFiniteLoss, TrainError
from .config import TrainConfig


def make_head(cfg: TrainConfig, cache):
    """The head of `cfg` for this cache's feature shape and classes (seeded)."""
    from ..heads import build_head

    torch.manual_seed(cfg.seed)
    return build_head(cfg.head, cache.feature_shape, len(cache.class_names), cfg.depth, **cfg.head_options)


def make_optimizer(head, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW at the scaled lr; no weight decay on biases and norms."""
    params = [p for p in head.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
        lr=cfg.scaled_lr,
    )  # fmt: skip


def loss_fn(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Summed (not averaged) loss of a batch: BCE-with-logits over K classes, or cross-entropy."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[1]
    return F.cross_entropy(logits, y, reduction="sum")


def epoch_batches(split: D.SplitData, cfg: TrainConfig, epoch: int, weights, device=None) -> Iterator:
    """This epoch's (positions, features [b, 1, n, c, h, w]) batches, prepared in a background thread
    (for a CUDA `device` as page-locked host tensors, copied without blocking)."""
    order = D.epoch_rows(len(split), cfg.batch_seed, epoch, weights)
    views = D.epoch_views(len(split), split.views, cfg.batch_seed, epoch)
    it = D.batches(split, order, cfg.batch_size, views, cfg.batch_seed + epoch)
    return D.prefetch(D.pinned(it) if device is not None and torch.device(device).type == "cuda" else it)


@torch.no_grad()
def predict_many(heads: list, split: D.SplitData, multi_label: bool, batch_size=64, device="cpu") -> list:
    """Probabilities [M, K] per head (sigmoid or softmax), averaged over the split's served views (mmaction2
    'prob'), all heads in one pass over the split."""
    for h in heads:
        h.eval()
    outs = [np.zeros((len(split), len(split.labels[0]))) for _ in heads]
    for pos, x in D.prefetch(D.batches(split, np.arange(len(split)), batch_size)):  # x: [b, V, n, c, h, w]
        x = D.to_tensor(x, device)
        for h, out in zip(heads, outs, strict=True):
            logits = torch.stack([h(x[:, v]) for v in range(x.shape[1])], 1)  # [b, V, K]
            probs = torch.sigmoid(logits) if multi_label else logits.softmax(-1)
            out[pos] = probs.mean(1).cpu().numpy()
    return outs


def predict(head, split: D.SplitData, multi_label: bool, batch_size: int = 64, device="cpu") -> np.ndarray:
    """Probabilities [M, K] of one head, averaged over the split's served views (mmaction2 'prob')."""
    return predict_many([head], split, multi_label, batch_size, device)[0]


def non_finite_loss(epoch: int, batch: int, loss: torch.Tensor, xb: torch.Tensor, clip_ids) -> NonFiniteLoss:
    """The error stopping a run whose loss is NaN/inf: epoch, batch, clips (non-finite features first)."""
    bad = ~torch.isfinite(xb.flatten(1)).all(1).cpu().numpy()
    ids = list(np.asarray(clip_ids)[bad] if bad.any() else clip_ids)
    which = "with non-finite features" if bad.any() else "in the batch"
    return NonFiniteLoss(
        f"epoch {epoch + 1}, batch {batch + 1}: loss is {loss.item()}; clips {which}: "
        f"{', '.join(map(str, ids[:5]))}{f' (+{len(ids) - 5} more)' if len(ids) > 5 else ''}; "
        "check the cache (`stecache verify`) or lower --lr"
    )


def epoch_loss(total: torch.Tensor, epoch: int) -> float:
    """An epoch's summed loss, kept on the device during the epoch and read back here once (one host
    sync); NonFiniteLoss naming the epoch when NaN/inf (on CUDA no step checks it: each would sync)."""
    value = total.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"epoch {epoch + 1}: loss is {value}; check the cache (`stecache verify`) "
                            "or lower --lr")  # fmt: skip
    return value


def check_classes(cache, train: D.SplitData) -> None:
    """TrainError when there is nothing to classify (one single-label class) or a class has no train clip."""
    if not cache.multi_label and len(cache.class_names) < 2:  # softmax over one class: always 100 %
        raise TrainError(
            f"cache {cache.url}: a single-label cache with one class ({cache.class_names[0]}) has nothing to "
            "classify; add a negative class (e.g. 'others') or make the cache multi-label (one sigmoid)"
        )
    counts = train.labels.sum(0)
    missing = [cache.class_names[k] for k in np.flatnonzero(counts == 0)]
    if missing:
        names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TrainError(  # a few names: the one-line message must keep its reason and the remedy
            f"cache {cache.url}: {len(missing)} class(es) ({names}) have no training clips; "
            "add examples or drop the class from the annotations"
        )
