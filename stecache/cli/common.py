"""What several command modules share: the seed type, the rank, `--device`, the RUN argument, warnings.

Only click and the standard library at import time, so `stecache --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

SEED = click.IntRange(0, 2**63 - 1)  # numpy and torch seeds: non-negative, 64-bit


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed): summaries print on rank 0 only."""
    return int(os.environ.get("RANK", "0") or 0)


def check_device(ctx, param, value: str | None) -> str | None:
    """A torch device that exists here (cpu, cuda, cuda:N, mps), or a usage error naming the flag."""
    if value is None:
        return None
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a torch device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise click.BadParameter(f"{value!r}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    mps = dev.type == "mps" and torch.backends.mps.is_available()
    if dev.type not in ("cpu", "cuda") and not mps:
        raise click.BadParameter(f"{value!r}: device type {dev.type!r} is not available here")
    return value


DEVICE = click.option("--device", callback=check_device,
                      help="torch device [default: cuda if available, else cpu].")  # fmt: skip
RUN = click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))


def warn_degenerate(results: Path) -> None:
    """One warning line on stderr per degenerate run in a results.jsonl."""
    from ..report import degenerate_runs, load_results

    for line in degenerate_runs(load_results(results)):
        click.echo(f"stecache: warning: degenerate run {line}", err=True)
