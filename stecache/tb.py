"""Per-epoch scalars as TensorBoard event files in the run folder (the convention mmaction2 users have),
when the optional `tensorboard` extra is installed; otherwise nothing happens."""

from __future__ import annotations

import math
from pathlib import Path

_TB: dict[str, object] = {}  # run folder -> open SummaryWriter


def log_epoch(out: Path, entry: dict) -> None:
    """Per-epoch scalars (loss, lr, val metrics, seconds) as TensorBoard events in the run folder, when the
    optional `tensorboard` extra is installed (`pip install stecache[tensorboard]`); else nothing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        return
    writer = _TB.get(str(out)) or _TB.setdefault(str(out), SummaryWriter(str(out)))
    step = entry["epoch"]
    for key, value in entry.items():
        if key == "val":
            for name, v in value.items():
                if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    writer.add_scalar(f"val/{name}", v, step)
        elif key != "epoch" and isinstance(value, (int, float)):
            writer.add_scalar(f"train/{key}", value, step)
    writer.flush()


def close(out: Path) -> None:
    """Close the run's writer (when the run finishes)."""
    writer = _TB.pop(str(out), None)
    if writer is not None:
        writer.close()
