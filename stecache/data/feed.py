"""Feeding batches to the model: background read-ahead, host -> device copies, GPU-resident splits.

`prefetch` runs a batch iterator in a thread, as many batches ahead as the measured shard-read and step
times need (`read_ahead`); `pinned` page-locks host batches so copies to a GPU are asynchronous;
`make_resident` moves a whole in-RAM split to the GPU once; `to_tensor` gives the float32 tensor a head
takes. Usage: `for pos, x in prefetch(pinned(batches(...))): x = to_tensor(x, "cuda")`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import StecacheError
from .load import SplitData

log = logging.getLogger(__name__)

READ_AHEAD_BYTES = 256 * 2**20  # most bytes of batches held ahead by `prefetch`


def read_ahead(read_seconds: float, step_seconds: float, item_bytes: int, lo: int = 2,
               max_bytes: int = READ_AHEAD_BYTES) -> int:  # fmt: skip
    """Batches to hold ahead so a read of `read_seconds` (the slowest item, e.g. a streamed buffer of
    shards) hides behind the steps of the queued batches: ceil(read / step) + 1, at least `lo`, at most
    what fits in `max_bytes`; before any step is measured (an iterator made ahead of its epoch), as many
    as fit."""
    cap = max_bytes // max(1, item_bytes)
    need = cap if step_seconds <= 0 else max(lo, int(np.ceil(read_seconds / step_seconds)) + 1)
    return int(max(lo, min(need, cap)))


def prefetch(it: Iterator, depth: int | None = None) -> Iterator:
    """Run iterator `it` in a background thread, ahead of the consumer; exceptions re-raise here.

    depth None (default): read-ahead sized while running from the measured step time (consumer time
    between batches) and read time (the slowest item of the producer: a streamed buffer of shards), see
    `read_ahead`; an int fixes it. The items and their order are exactly `it`'s. Reading starts at the
    call, so an iterator made before it is needed (the next epoch's, during validation) is ready in time.
    """
    items: list = []
    cond = threading.Condition()
    stop = threading.Event()
    end = object()
    stats = {"read": 0.0, "step": 0.0, "bytes": 1, "limit": depth or 2}

    def put(item) -> bool:
        with cond:
            while len(items) >= stats["limit"] and not stop.is_set():
                cond.wait(0.1)
            if stop.is_set():
                return False
            items.append(item)
            cond.notify_all()
            return True

    def work():
        try:
            t = time.perf_counter()
            for item in it:
                read = time.perf_counter() - t
                if depth is None:
                    stats["read"] = max(stats["read"], read)
                    stats["bytes"] = max(stats["bytes"], _nbytes(item))
                    stats["limit"] = read_ahead(stats["read"], stats["step"], stats["bytes"])
                if not put(item):
                    return
                t = time.perf_counter()
            put(end)
        except BaseException as e:  # noqa: B036 — handed to the consumer, which re-raises it
            put(e)

    threading.Thread(target=work, daemon=True).start()
    gen = _drain(items, cond, stop, end, stats, depth)
    weakref.finalize(gen, stop.set)  # an iterator dropped unread stops its thread
    return gen


def _drain(items: list, cond, stop, end, stats: dict, depth: int | None) -> Iterator:
    """The consumer side of `prefetch`: hand out items in order, measure the step time between them."""
    try:
        while True:
            with cond:
                while not items:
                    cond.wait(0.1)
                item = items.pop(0)
                cond.notify_all()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            got = time.perf_counter()
            yield item
            if depth is None:  # the consumer's step: from handing the item out to asking for the next
                step = time.perf_counter() - got
                stats["step"] = step if not stats["step"] else 0.8 * stats["step"] + 0.2 * step
                stats["limit"] = read_ahead(stats["read"], stats["step"], stats["bytes"])
    finally:
        stop.set()
        with cond:
            cond.notify_all()


def _nbytes(item) -> int:
    parts = item if isinstance(item, tuple) else (item,)
    return sum(getattr(x, "nbytes", 0) for x in parts)


def to_tensor(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Stored features (fp16) → float32 tensor on `device`; a host tensor that is pinned (see `pinned`)
    goes to a GPU without blocking, a GPU-resident batch (see `make_resident`) is only converted."""
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, non_blocking=True).to(torch.float32)


# ---- the GPU path: pinned host batches, or the whole split resident in device memory ------------------

RESIDENT_SHARE = 0.5  # resident="auto": a split goes to the GPU if it takes at most this share of free memory
RESIDENT_MODES = ("auto", "on", "off")


def pinned(it: Iterator[tuple]) -> Iterator[tuple]:
    """(positions, features) with host features as page-locked tensors (run it in the prefetch thread, so
    the main thread's copies to the GPU are asynchronous); device tensors pass through."""
    for pos, x in it:
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.ascontiguousarray(x)).pin_memory()
        yield pos, x


def make_resident(data: SplitData, device: str | torch.device, mode: str = "auto") -> bool:
    """Move an in-RAM split's features to `device` once, kept in the stored dtype (fp16): every batch is
    then gathered there and nothing crosses the bus during training. "auto": only on CUDA and when the
    features take at most RESIDENT_SHARE of the free device memory; "on": always (any device, so the path
    is testable on CPU; fails if the split is streamed); "off": never. Returns whether it is resident."""
    if mode not in RESIDENT_MODES:
        raise StecacheError(f"--resident {mode!r}: choose one of {', '.join(RESIDENT_MODES)}")
    device = torch.device(device)
    if isinstance(data.features, torch.Tensor):
        return True
    if mode == "off" or (mode == "auto" and (device.type != "cuda" or not data.in_ram)):
        return False
    if not data.in_ram:
        raise StecacheError(
            f"--resident on: split {data.split} is streamed (larger than the RAM limit), it cannot be "
            "moved to the device whole; raise STECACHE_RAM_LIMIT or use --resident auto"
        )
    nbytes = data.features.nbytes
    if mode == "auto":
        free = torch.cuda.mem_get_info(device)[0]
        if nbytes > RESIDENT_SHARE * free:
            log.info("split %s: %.1f MB stays in host RAM (> %.0f%% of %.1f MB free on %s)", data.split,
                     nbytes / 1e6, 100 * RESIDENT_SHARE, free / 1e6, device)  # fmt: skip
            return False
    data.features = torch.from_numpy(data.features).to(device)
    log.info("split %s: %.1f MB resident on %s", data.split, nbytes / 1e6, device)
    return True
