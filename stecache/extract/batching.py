"""The forward batch of an extraction, chosen by timing real forwards, and forwards that do not block.

`BatchChooser` times a few candidate batch sizes (views per forward) on the first clips of an extraction
on the device in use and keeps the fastest per-view rate; `launch` queues one forward and hands back its
output once the device is done (pinned memory and non-blocking copies on CUDA).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import StecacheError

log = logging.getLogger(__name__)


class Ready:
    """The host copy of a forward's output, available once the device has finished (see launch)."""

    def __init__(self, y: torch.Tensor, event=None):
        self.y, self.event = y, event

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.y.numpy()


def launch(backbone, items, v_shape, device, dtype: str = "float32") -> Ready:
    """Queue one forward of the views `items` (row, view, [3, T, H, W]).

    CPU: the float32 output (the cache rounds it to its dtype). CUDA: the views are stacked straight into
    page-locked memory, both copies are non-blocking and the output is rounded to the cache's `dtype` on
    the device (the same round-to-nearest as on the host, half the bytes back), so this returns before the
    device is done; Ready.result() waits for it.
    """
    cuda = device.type == "cuda"
    first = items[0][2]
    x = torch.empty((len(items), *first.shape), dtype=first.dtype, pin_memory=cuda)  # [B, 3, T, H, W]
    torch.stack([t for _, _, t in items], out=x)
    with torch.inference_mode():
        y = backbone(x.to(device, non_blocking=cuda))  # [B, n, c, h, w]
    if tuple(y.shape[1:]) != v_shape[1:]:
        raise StecacheError(f"{backbone.name}: output {tuple(y.shape[1:])} != expected {v_shape[1:]}")
    if not cuda:
        return Ready(y.float().cpu())
    y = y.to(getattr(torch, dtype))
    host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
    host.copy_(y, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return Ready(host, event)


# Candidate forward batches (views per forward), smallest first: this CPU wants small ones (a ViT-B
# batch of 8 × 1,568 tokens falls out of cache), GPUs large ones.
CANDIDATES = {"cpu": (1, 2, 4, 8, 16), "cuda": (4, 8, 16, 32, 64, 128, 256)}
SHARE = 16  # a candidate is tried only if the job has at least SHARE x its size views (small jobs: few)
SLOWER = 1.05  # stop growing the batch once a size is this much slower per view than the best so far


class BatchChooser:
    """Picks the forward batch by timing real forwards at the start of an extraction.

    The first forward (smallest candidate) is a warm-up and is not timed. Then candidates are tried in
    increasing order until one is more than SLOWER x the best per-view time so far twice in a row (noise
    only ever slows a forward down, so the minimum of two is the measurement) or the candidates run out;
    the best two sizes are then timed until each has two forwards, and the lower minimum wins. Every
    measured forward is a real one: its features are kept. A forced size (`--batch-size`) skips all of it;
    so does a small job (`total` views): a trial size must fit SHARE times into it, so measuring never costs
    more than a small share of the work.
    """

    def __init__(self, device, forced: int | None = None, candidates=None, total: int | None = None):
        self.forced = forced
        cands = tuple(candidates or CANDIDATES.get(torch.device(device).type, CANDIDATES["cuda"]))
        if total is not None:  # a trial size may take at most 1/SHARE of the job's views
            cands = cands[:1] + tuple(c for c in cands[1:] if c * SHARE <= total)
        self.candidates = cands
        self.times: dict[int, list[float]] = {}  # size -> seconds per view of each timed forward
        self.phase = "done" if forced or len(cands) == 1 else "warmup"  # warmup -> scan -> confirm -> done
        self.i = 0  # scan position in candidates
        self.confirm: list[int] = []
        self.chosen: int | None = forced or (cands[0] if len(cands) == 1 else None)

    @property
    def measuring(self) -> bool:
        return self.phase != "done"

    @property
    def size(self) -> int:
        if self.phase == "done":
            return self.chosen
        return self.confirm[0] if self.phase == "confirm" else self.candidates[self.i]

    def best(self) -> int:
        return min(self.times, key=lambda s: min(self.times[s]))

    def record(self, n: int, seconds: float) -> None:
        """One forward of n views took `seconds`; a short batch (the data ran out) is not a measurement."""
        size = self.size
        if n < size or self.phase == "done":
            return
        if self.phase == "warmup":
            self.phase = "scan"
            return
        self.times.setdefault(size, []).append(seconds / n)
        if self.phase == "scan":
            slower = min(self.times[size]) > SLOWER * min(self.times[self.best()])
            if slower and len(self.times[size]) < 2:
                return  # time it again: noise only ever slows a forward down
            if not slower and self.i + 1 < len(self.candidates):
                self.i += 1
                return
            top = sorted(self.times, key=lambda s: min(self.times[s]))[:2]
            self.phase, self.confirm = "confirm", [s for s in sorted(top) if len(self.times[s]) < 2]
        elif self.phase == "confirm":
            self.confirm.pop(0)
        if self.confirm:
            return
        self.phase, self.chosen = "done", self.best()
        log.info("forward batch: %d views (per-view ms: %s)", self.chosen, self.describe())

    def describe(self) -> str:
        return ", ".join(f"{s}: {1e3 * min(t):.1f}" for s, t in sorted(self.times.items()))

    def provenance(self, device) -> dict:
        size = self.chosen if self.chosen is not None else (self.best() if self.times else self.size)
        return {
            "batch_size": size,
            "chosen": "--batch-size"
            if self.forced
            else "measured"
            if self.times and self.chosen
            else "smallest (few clips)"
            if self.chosen
            else "data ran out first",
            "device": str(device),
            "per_view_ms": {str(s): round(1e3 * min(t), 3) for s, t in sorted(self.times.items())},
        }
