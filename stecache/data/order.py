"""The order of an epoch's rows, and the batches served in it (the same in RAM and streamed).

The epoch's row list (a permutation, or a class-balanced weighted draw) depends only on (seed, epoch), and
its shard-aware reshuffle (shards in shuffled order, rows shuffled within groups of ORDER_SHARDS shards)
only on the seed and the cache's shard size — never on the mode or the RAM limit — so a run gives the same
batches in RAM or streamed, resumed (in either mode) or distributed. Usage: `batches(data,
epoch_rows(len(data), seed, epoch), 64, seed=seed)` -> (positions [b], features [b, V, n, c, h, w]).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .load import SplitData

ORDER_SHARDS = 4  # shards whose rows one training order shuffles together, in RAM and streamed alike


def sample_weights(labels: np.ndarray) -> np.ndarray:
    """Class-balanced sampling weight per sample from multi-hot labels [M, K] (single-label: one 1 per row).

    A sample weighs the mean of 1/count(k) over its labels k, so every class is drawn equally often when
    labels do not overlap (single-label: exactly 1/count). Samples with no label form one extra "none"
    class. Classes are counted in `labels`, i.e. the training split.
    """
    labels = np.asarray(labels, dtype=np.float64)
    counts = labels.sum(0)
    inv = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    n_labels = labels.sum(1)
    w = np.divide(labels @ inv, n_labels, out=np.zeros(len(labels)), where=n_labels > 0)
    none = n_labels == 0
    w[none] = 1.0 / none.sum() if none.any() else 0.0
    return w


def epoch_rows(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Positions 0..n-1 in this epoch's order: a permutation, or n weighted draws with replacement."""
    rng = np.random.default_rng([seed, epoch, 1])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def epoch_views(n: int, num_views: int, seed: int, epoch: int) -> np.ndarray:
    """A random view index per position for this epoch: [n] int in 0..num_views-1."""
    return np.random.default_rng([seed, epoch, 2]).integers(0, num_views, size=n)


def shard_order(data: SplitData, order: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Regroup positions for training: shuffled shard order, rows shuffled within groups of ORDER_SHARDS
    shards (independent of the mode and the RAM limit: results are a function of the command)."""
    shard = data.rows[order] // data.shard_rows
    k = ORDER_SHARDS
    shards = rng.permutation(np.unique(shard))
    groups = []
    for i in range(0, len(shards), k):
        g = order[np.isin(shard, shards[i : i + k])]
        groups.append(rng.permutation(g))
    return groups


def _segments(data: SplitData, order: np.ndarray, batch_size: int, seed: int | None) -> Iterator[tuple]:
    """(positions, features [p, V, n, c, h, w] or None in RAM) pieces, in the same order in both modes;
    streamed: one sorted read per buffer of shards."""
    step = data.buffer_shards * data.shard_rows  # rows a streamed read may hold
    if seed is None:  # keep `order` (evaluation)
        groups = [order]
    else:
        groups = shard_order(data, order, np.random.default_rng([seed, 3, len(order)]))
    for group in groups:
        for i in range(0, len(group), batch_size if data.in_ram else step):
            piece = group[i : i + (batch_size if data.in_ram else step)]
            if data.in_ram:
                yield piece, None
            else:
                uniq, inv = np.unique(piece, return_inverse=True)
                yield piece, data.read(uniq)[inv]


def batches(
    data: SplitData,
    order: np.ndarray,
    batch_size: int,
    view_of: np.ndarray | None = None,
    seed: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions [b], features [b, V', n, c, h, w]); V' = 1 if view_of.

    In `order` when seed is None; with a seed, a shard-aware reshuffle of `order` (the same in RAM and
    streamed).
    """
    pos_buf, feat_buf, held = [], [], 0
    for pos, f in _segments(data, order, batch_size, seed):
        if f is None:  # in RAM: gather only what is needed
            f = (
                data.features[pos]
                if view_of is None
                else data.features[pos, view_of[pos] % data.views][:, None]
            )
        elif view_of is not None:
            f = f[np.arange(len(pos)), view_of[pos] % data.views][:, None]
        start = 0
        if held:  # complete the batch begun in the previous piece
            start = min(batch_size - held, len(pos))
            pos_buf.append(pos[:start])
            feat_buf.append(f[:start])
            held += start
            if held < batch_size:
                continue
            yield np.concatenate(pos_buf), _cat(feat_buf)
            pos_buf, feat_buf, held = [], [], 0
        for i in range(start, len(pos), batch_size):  # whole batches as views, the rest carried over
            if len(pos) - i < batch_size:
                pos_buf, feat_buf, held = [pos[i:]], [f[i:]], len(pos) - i
                break
            yield pos[i : i + batch_size], f[i : i + batch_size]
    if held:
        yield np.concatenate(pos_buf), _cat(feat_buf)


def _cat(parts: list):
    """np.concatenate, or torch.cat for resident (torch) features."""
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)
