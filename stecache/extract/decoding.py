"""Decoding the clips of an extraction, in this process or in worker processes, chosen by measurement.

On a GPU the host's cores are idle while the device computes, so worker processes decode (policy). On a
CPU the forward pass already uses every core and decoding workers compete with it: they pay off only when
decoding is a large part of the work (a small encoder), and cost a few per cent otherwise (ViT-B). So the
first clips are decoded here, timing the decode and the rest of the loop between two clips (forwards,
bookkeeping); decoding moves to workers only if it took at least WORKER_SHARE of that time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch

from ..annotations import Dataset, resolve_clip
from .views import Views, load_views

log = logging.getLogger(__name__)

PROBE = 4  # clips timed in this process after a first (warm-up) clip before the placement is decided
# Decode share of the per-clip time above which worker processes decode (CPU). Measured on 2 cores
# (BENCHMARKS.md, extraction): at a share of ~0.04 (ViT-B) or ~0.2 (a small encoder) decoding here is
# 0-7 % faster than 1-2 workers, at ~0.9 (the tiny encoder) 2 workers are ~1.2x faster.
WORKER_SHARE = 1 / 3


class Reader(torch.utils.data.Dataset):
    """Decodes clip `rows[j]` into its views, or reports why it cannot."""

    def __init__(self, dataset: Dataset, rows: Sequence[int], views: Views, strict: bool, box_margin: float):
        self.dataset, self.rows, self.views = dataset, list(rows), views
        self.strict, self.box_margin = strict, box_margin

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | None, str, str]:
        """(row, views [V, 3, T, H, W] or None, error, partial note "decoded/declared frames" or "")."""
        row = self.rows[j]
        clip, info = self.dataset.clips[row], {}
        try:
            path = resolve_clip(self.dataset.root_of(clip), clip.path)  # refused before anything opens it
            src = dict(start=clip.start, end=clip.end, box=clip.box, box_margin=self.box_margin)
            x = load_views(path, self.views, row, strict=self.strict, info=info, **src)
        except Exception as e:  # any clip-level failure is recorded in the cache, never fatal for the run
            return row, None, f"{type(e).__name__}: {e}", ""
        note = f"{info['decoded']}/{info['declared']} frames decoded" if info.get("partial") else ""
        return row, x, "", note


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the forward pass for cores


class Decoded:
    """The reader's items in order, decoded where it is measured (CPU) or known (GPU) to be fastest.

    `workers`: None = choose (CPU: measure; GPU: cpus - 2, at most 16), 0 = this process, N = N workers.
    Iterate it once; `provenance()` says what ran and why.
    """

    def __init__(self, reader: Reader, device: torch.device, workers: int | None = None):
        self.reader = reader
        cpus = os.cpu_count() or 1
        self.pool = min(2, cpus) if device.type == "cpu" else max(1, min(16, cpus - 2))  # workers if any
        self.share: float | None = None  # measured decode share of the per-clip time
        if workers is not None:
            self.workers, self.chosen = workers, "--workers"
        elif device.type != "cpu":
            self.workers, self.chosen = self.pool, "policy (the device computes, the host's cores decode)"
        else:
            self.workers, self.chosen = None, None

    def __iter__(self):
        n, j = len(self.reader), 0
        if self.workers is None:  # time the first clips here, then decide
            decode = rest = 0.0
            while j < n and j <= PROBE:
                t0 = time.perf_counter()
                item = self.reader[j]
                t1 = time.perf_counter()
                yield item
                if j:  # clip 0 warms up the decoder and the first forward
                    decode, rest = decode + t1 - t0, rest + time.perf_counter() - t1
                j += 1
            self.share = decode / (decode + rest) if decode + rest else None
            if j < n:
                go = self.share is not None and self.share >= WORKER_SHARE and self.pool > 1
                self.workers, self.chosen = (self.pool if go else 0), "measured"
            else:
                self.workers, self.chosen = 0, "few clips"
            log.info("decoding: %s (decode share %.2f)", self.describe(), self.share or 0)
        rest = torch.utils.data.Subset(self.reader, range(j, n))
        if not self.workers:
            yield from (rest[i] for i in range(len(rest)))
            return
        yield from torch.utils.data.DataLoader(
            rest,
            batch_size=None,
            num_workers=self.workers,
            collate_fn=_identity,
            worker_init_fn=_worker_init,
            prefetch_factor=4,
        )

    def describe(self) -> str:
        return f"{self.workers} worker processes" if self.workers else "in the main process"

    def provenance(self) -> dict:
        share = None if self.share is None else round(self.share, 3)
        return {"workers": self.workers, "chosen": self.chosen, "decode_share": share}
