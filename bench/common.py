"""Shared benchmark helpers: interleaved A/B timing, a matmul canary, and BENCHMARKS.md sections.

This machine's speed jumps ~3x between phases, so every benchmark runs its variants interleaved
(A B A B ...) and reports medians and ratios beside the canary measured in the same loop.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def matmul_gflops(n: int = 1024, reps: int = 5) -> float:
    """fp32 matmul throughput right now (GFLOP/s), the canary every table carries."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def interleave(variants: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1) -> dict:
    """Time each variant `rounds` times, interleaved A B A B ...; returns {name: [seconds]} + canary."""
    for _ in range(warmup):
        for f in variants.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    times["_canary_gflops"] = []
    for _ in range(rounds):
        times["_canary_gflops"].append(matmul_gflops())
        for name, f in variants.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of BENCHMARKS.md with `body`."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    block = f"## {title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    BENCHMARKS.write_text(text.rstrip() + "\n")
    print(block)


def machine_line() -> str:
    """One line naming torch's threads and version, for table captions."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
