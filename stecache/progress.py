"""Progress of a long job that tells the truth: it counts clips whose results are computed AND written.

Decoding may run ahead of the forward pass and the forward pass ahead of the writer; the bar's count, rate
and ETA come from written clips only, with decoded and computed shown beside them. On a terminal this is a
tqdm bar; when stderr is not a terminal (nohup, a scheduler, `2> log`), a plain line every `log_every`
seconds and one at the end, e.g. `extract: 12/36 clips written (33%), 0.84 clip/s, ETA 29s; computed 16,
decoded 20`. Counts may be bumped from any thread; rendering happens on `refresh()` in the caller's.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _duration(s: float) -> str:
    s = int(round(s))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


class Progress:
    """Counts of decoded, computed and written items; renders a bar (tty) or periodic lines (not a tty)."""

    def __init__(self, total: int, label: str = "extract", unit: str = "clip", enabled: bool = True,
                 log_every: float = 30.0, stream: TextIO | None = None, tty: bool | None = None):  # fmt: skip
        self.total, self.label, self.unit, self.log_every = total, label, unit, log_every
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if tty is None else tty
        self.decoded = self.computed = self.written = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._bar = None
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=f"{label} (written)", file=self.stream)

    def add(self, decoded: int = 0, computed: int = 0, written: int = 0) -> None:
        """Bump the counts (thread-safe)."""
        with self._lock:
            self.decoded += decoded
            self.computed += computed
            self.written += written

    def rate(self) -> float:
        """Written items per second since start."""
        dt = time.monotonic() - self._t0
        return self.written / dt if dt > 0 else 0.0

    def line(self) -> str:
        """`extract: 12/36 clips written (33%), 0.84 clip/s, ETA 29s; computed 16, decoded 20`."""
        r = self.rate()
        eta = _duration((self.total - self.written) / r) if r > 0 else "?"
        pct = 100 * self.written / self.total if self.total else 100.0
        u = self.unit
        return (
            f"{self.label}: {self.written}/{self.total} {u}s written ({pct:.0f}%), {r:.2f} {u}/s, "
            f"ETA {eta}; computed {self.computed}, decoded {self.decoded}, "
            f"elapsed {_duration(time.monotonic() - self._t0)}"
        )

    def refresh(self, final: bool = False) -> None:
        """Show the current counts: update the bar, or print a line if `log_every` seconds have passed."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = self.written
            self._bar.set_postfix_str(f"computed {self.computed}, decoded {self.decoded}", refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if final or now - self._last_line >= self.log_every:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """Final render (a last line when not a terminal) and close the bar."""
        if not self.enabled:
            return
        self.refresh(final=True)
        if self._bar is not None:
            self._bar.close()
