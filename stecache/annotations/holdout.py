"""`--val-from-train F`: hold out a stratified, seeded fraction of train as `val`.

Single-label: per class, round(F * n) clips drawn at random (a class with one clip stays in train).
Multi-label: iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011), which keeps every label's
share close to F even when labels co-occur. Unlabelled train clips stay in train.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import AnnotationError
from .dataset import Dataset


def val_from_train(ds: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A copy of `ds` with a held-out part of its train clips moved to split 'val'."""
    if not 0 < fraction < 1:
        raise AnnotationError(f"--val-from-train {fraction}: must be between 0 and 1")
    if ds.split("val"):
        raise AnnotationError("--val-from-train: the dataset already has a val split")
    rows = [i for i, c in enumerate(ds.clips) if c.split == "train" and c.labels]
    if not rows:
        raise AnnotationError("--val-from-train: no labelled train clips to hold out from")
    y = np.zeros((len(rows), len(ds.classes)), dtype=bool)  # [M, K]
    for j, i in enumerate(rows):
        y[j, list(ds.clips[i].labels)] = True
    rng = np.random.default_rng(seed)
    held = _iterative(y, fraction, rng) if ds.multi_label else _per_class(y.argmax(1), fraction, rng)
    moved = {rows[j] for j in np.flatnonzero(held)}
    clips = tuple(dataclasses.replace(c, split="val") if i in moved else c for i, c in enumerate(ds.clips))
    prov = {**ds.provenance, "val_from_train": {"fraction": fraction, "seed": seed, "val": len(moved),
            "method": "iterative-stratification" if ds.multi_label else "stratified"}}  # fmt: skip
    return dataclasses.replace(ds, clips=clips, provenance=prov)


def _per_class(y: np.ndarray, fraction: float, rng) -> np.ndarray:
    held = np.zeros(len(y), dtype=bool)
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        take = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        held[idx[:take]] = True
    return held


def _iterative(y: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Sechidis et al. Algorithm 1 for two subsets (val = subset 0 with ratio `fraction`)."""
    ratios = np.array([fraction, 1 - fraction])
    want = np.outer(ratios, y.sum(0)).astype(float)  # [2, K] desired label counts
    want_total = ratios * len(y)
    held = np.zeros(len(y), dtype=bool)
    left = np.ones(len(y), dtype=bool)
    while left.any():
        counts = y[left].sum(0)
        if not counts.any():
            break
        k = int(np.argmin(np.where(counts > 0, counts, np.inf)))  # the rarest label left
        for i in rng.permutation(np.flatnonzero(left & y[:, k])):
            d = want[:, k]
            best = np.flatnonzero(d == d.max())
            if len(best) > 1:
                t = want_total[best]
                best = best[t == t.max()]
            s = int(rng.choice(best))
            held[i] = s == 0
            want[s] -= y[i]
            want_total[s] -= 1
            left[i] = False
    return held
