"""The one-writer lock of a local cache: `<cache>/.lock`, held while extracting or repairing."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CacheBusy


def _local_path(url: str | Path) -> Path | None:
    """The local directory of a cache URL, or None for remote (fsspec) stores."""
    s = str(url)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    return None if "://" in s else Path(s)


@contextmanager
def lock(url: str | Path) -> Iterator[None]:
    """Hold `<cache>/.lock` while extracting; CacheBusy if another process holds it.

    POSIX record locks (lockf): the kernel drops them when the holder dies (SIGKILL included), and forked
    children such as DataLoader workers do not inherit them, so a killed run never leaves a stale lock.
    """
    path = _local_path(url)
    if path is None:  # object stores have no flock; callers own the one-writer rule there
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CacheBusy(
                f"{url}: cache is busy, {holder} is extracting into it; wait for it to finish or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
