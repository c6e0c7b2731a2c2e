"""A training run's settings: `TrainConfig` (the only place defaults live, every value checked when built)
and the learning-rate schedule `lr_at` (linear warm-up, then cosine to 0, per optimiser step).

Python: `lr_at(TrainConfig(epochs=10), step=0, steps_per_epoch=4)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import data as D
from ..config import Config, check_range
from ..errors import StecacheError, TrainError

# (low, high, kind) of every numeric TrainConfig field; seeds as numpy's and torch's generators take them
LIMITS = {
    "epochs": (1, 100_000, int), "warmup_epochs": (0, 100_000, int), "batch_size": (1, 1 << 20, int),
    "seed": (0, 2**63 - 1, int), "data_seed": (0, 2**63 - 1, int), "depth": (0, 1000, int),
    "lr": (1e-12, 10.0, float), "weight_decay": (0.0, 10.0, float),
}  # fmt: skip


def _non_finite(obj, key: str = "") -> str | None:
    """The key of the first NaN/inf float in a nested option mapping, None if all are finite."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{key}={obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        if bad := _non_finite(v, f"{key}[{k}]" if key else str(k)):
            return bad
    return None


@dataclass(frozen=True)
class TrainConfig(Config):
    """Everything that decides a training run's result (the cache is named separately)."""

    head: str = "ste"
    depth: int | None = None  # None: the head's smallest valid depth
    head_options: dict = field(default_factory=dict)  # passed to heads.build_head
    epochs: int = 30  # paper: 100 (5 warm-up + 95 cosine)
    warmup_epochs: int = 5  # capped at epochs // 5
    lr: float = 1e-3  # for a global batch of 256; scaled linearly
    batch_size: int = 32  # global batch (all ranks together)
    weight_decay: float = 0.05
    seed: int = 0
    data_seed: int | None = None  # seed of the batch order and views; None: `seed` (fix it to share a pass)
    balanced: bool = True  # class-balanced weighted sampler (data.sample_weights)
    tune_threshold: bool = True  # multi-label: also report test at the val-tuned global threshold
    train_views: str = "all"  # "all": one random stored view (test or augmented) per clip per epoch; "first"
    test_views: str = "test"  # "test": average probabilities over the test views (mmaction2 'prob'); "first"
    ram_limit: str | None = None  # bytes (K/M/G suffix) a split may take in RAM; None: data.ram_limit()
    val_split: str = "val"  # the split epochs are selected on (e.g. one `extract --val-from-train` made)

    def __post_init__(self):
        for key, ok in (("train_views", ("all", "first")), ("test_views", ("test", "first"))):
            if getattr(self, key) not in ok:
                raise TrainError(f"{key} must be one of {', '.join(ok)}, not {getattr(self, key)!r}")
        for key, (lo, hi, kind) in LIMITS.items():  # finite and in range, checked before anything is written
            value = getattr(self, key)
            if value is None and key in ("depth", "data_seed"):
                continue
            if msg := check_range(key, value, lo, hi, kind):
                raise TrainError(msg)
        for key in ("balanced", "tune_threshold"):
            if not isinstance(getattr(self, key), bool):
                raise TrainError(f"{key} must be true or false, not {getattr(self, key)!r}")
        if not isinstance(self.head, str) or not isinstance(self.head_options, dict):
            raise TrainError(f"head must be a name and head_options a mapping, not {self.head!r}, "
                             f"{self.head_options!r}")  # fmt: skip
        if bad := _non_finite(self.head_options):
            raise TrainError(f"head option {bad} must be a finite number")
        if self.ram_limit is not None:
            try:
                D.ram_limit(self.ram_limit)
            except StecacheError as e:
                raise TrainError(str(e).replace(" (STECACHE_RAM_LIMIT)", " (--ram-limit)")) from None

    @property
    def batch_seed(self) -> int:
        """Seed of the batch order and view draws."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256

    @property
    def warmup(self) -> int:
        return min(self.warmup_epochs, self.epochs // 5)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then cosine to 0."""
    warm, total = cfg.warmup * steps_per_epoch, cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.scaled_lr * (step + 1) / warm
    return cfg.scaled_lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
