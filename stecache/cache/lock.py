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


NOT_STORES = {  # fsspec protocols a cache cannot live in: gone at exit, read-only, or archives
    "memory": "kept in this process's memory only and lost when it exits",
    "zip": "a read-only archive",
    "tar": "a read-only archive",
    "http": "read-only",
    "https": "read-only",
    "github": "read-only",
    "data": "read-only",
}


def check_url(url: str | Path, write: bool = False) -> None:
    """Refuse a cache URL that cannot work: an unknown or uninstalled protocol; for writing also a
    non-persistent or read-only store (memory://, zip://, http://) and a local path that is not a folder."""
    from ..errors import StecacheError

    s = str(url)
    if not s.strip():
        raise StecacheError("the cache path is empty; give a folder such as work/cache.zarr")
    local = _local_path(s)
    if local is None:
        proto = s.split("://", 1)[0].split("::")[-1].lower()
        if write and proto in NOT_STORES:
            raise StecacheError(
                f"{s}: a cache cannot be written to {proto}:// ({NOT_STORES[proto]}); give a local folder "
                "or a persistent store such as s3://"
            )
        import fsspec

        try:
            fsspec.get_filesystem_class(proto)
        except (ValueError, ImportError) as e:
            why = " ".join(str(e).split())[:160]
            raise StecacheError(f"{s}: cannot open {proto}:// URLs here ({why})") from None
    elif write and local.exists() and not local.is_dir():
        raise StecacheError(f"{s}: exists and is not a folder; a cache is a folder such as work/cache.zarr")
