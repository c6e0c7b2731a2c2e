"""Checksums of a cache's bytes: one per clip and array, written with the data, checked on every read.

`features_checksum` (and `views_checksum` with views) hold the CRC-32C of each row's stored bytes
(little-endian, the cache dtype), -1 where the row was never written. They live outside the shard files,
so a deleted, zeroed, garbage-filled, truncated or swapped shard no longer matches. CRC-32C runs at
~19 GB/s here (hardware instruction through google-crc32c, a zarr dependency), zlib's CRC-32 at ~6 GB/s
and blake2b at ~1.4 GB/s; the cost on write and read is measured in bench/bench_cache.py.
`verify(url)` checks every row and the manifest; `stecache verify CACHE [--repair]` is the command.
"""

from __future__ import annotations

import datetime
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import CacheCorrupt

try:
    import google_crc32c

    def _crc32c(b: bytes) -> int:
        return google_crc32c.value(b)
except ImportError:  # pragma: no cover - zarr depends on google-crc32c
    _crc32c = None

HASHES: dict[str, Callable[[bytes], int] | None] = {"crc32c": _crc32c, "crc32": zlib.crc32}
HASH = "crc32c" if _crc32c is not None else "crc32"
ARRAYS = {"features": "features_checksum", "views": "views_checksum"}  # data array -> its checksums
NONE = -1  # checksum of a row never written
STATE_FILE = "verify.json"  # last `verify` outcome, beside zarr.json (local caches)


def row_checksums(x: np.ndarray, hash_name: str = HASH) -> np.ndarray:
    """Checksum of each row's stored bytes: [S, ...] -> [S] int64 (little-endian bytes of x's dtype)."""
    f = HASHES[hash_name]
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).view()  # no copy when already so
    x.flags.writeable = False  # google-crc32c hashes read-only buffers in place (no tobytes copy)
    return np.fromiter((f(r) for r in x.reshape(len(x), -1)), dtype=np.int64, count=len(x))


def shard_file(cache, name: str, row: int) -> str:
    """The shard file (relative to the cache) holding `row` of array `name`."""
    ndim = len(cache.feature_shape) + (2 if name == "views" else 1)
    return f"{name}/c/{row // cache.shard_size}/" + "/".join("0" * (ndim - 1))


def mismatch_message(cache, name: str, rows: np.ndarray) -> str:
    """One line naming the shard files and clip ids whose bytes do not match their checksums."""
    files = sorted({shard_file(cache, name, int(r)) for r in rows})
    ids = [str(cache.clip_id[int(r)]) for r in rows[:5]]
    more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
    return (
        f"{cache.url}: {len(rows)} clip(s) fail their checksum in {', '.join(files[:3])}"
        f"{' ...' if len(files) > 3 else ''}: {', '.join(ids)}{more}; run `stecache verify --repair`"
    )


@dataclass
class BadRow:
    row: int
    clip_id: str
    file: str  # shard (or metadata) file, relative to the cache
    reason: str


@dataclass
class Report:
    """What `verify` found: damaged rows, problems that are not rows, and how much it read."""

    url: str
    hash: str | None  # None: the cache has no checksums (made before they existed)
    rows_checked: int = 0
    bytes_checked: int = 0
    seconds: float = 0.0
    bad: list[BadRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # not repairable by re-extracting rows
    repaired: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad and not self.problems and self.hash is not None

    def lines(self) -> list[str]:
        gbs = self.bytes_checked / self.seconds / 1e9 if self.seconds else 0.0
        out = [
            f"{self.url}: checked {self.rows_checked} clip(s), {self.bytes_checked / 1e6:,.1f} MB in "
            f"{self.seconds:.2f} s ({gbs:.2f} GB/s), checksums {self.hash or 'none'}"
        ]
        if self.hash is None:
            out.append(
                "no checksums: this cache was made before stecache stored them; re-extract it to add them"
            )
        out += [f"damaged: {p}" for p in self.problems]
        for b in self.bad[:20]:
            out.append(f"damaged: row {b.row} {b.clip_id} in {b.file}: {b.reason}")
        if len(self.bad) > 20:
            out.append(f"damaged: ... and {len(self.bad) - 20} more clip(s)")
        if self.repaired:
            out.append(
                f"repaired: {self.repaired} clip(s) marked not done; re-run the same extract to redo them"
            )
        elif self.bad:
            out.append("run `stecache verify CACHE --repair` to mark them not done, then re-run extract")
        if self.ok:
            out.append("ok: every stored byte matches its checksum")
        return out


def _meta_problems(cache, report: Report) -> np.ndarray | None:
    """Check the per-clip arrays (labels, split, clip_id against the manifest; done, error readable)."""
    from .schema import Row, manifest_fingerprint

    try:
        labels, split, ids = cache.labels(), cache.split, cache.clip_id
        rows = [
            Row(i, tuple(np.flatnonzero(lab).tolist()), s)
            for i, lab, s in zip(ids, labels, split, strict=True)
        ]
        if len(rows) != len(cache) or manifest_fingerprint(rows) != cache.attrs.get("manifest"):
            report.problems.append("labels/split/clip_id do not match the manifest fingerprint in zarr.json")
    except CacheCorrupt as e:
        report.problems.append(str(e))
    try:
        return cache.done
    except CacheCorrupt as e:
        report.problems.append(str(e))
        return None


def verify(url, repair: bool = False) -> Report:
    """Check every done row of the cache at `url` against its checksums; with `repair`, mark damaged rows
    not done (and clear their checksum) so the next extract redoes exactly them."""
    from .create import open_cache
    from .lock import _local_path, lock

    t0 = time.perf_counter()
    cache = open_cache(url, mode="r+" if repair else "r")
    report = Report(str(url), cache.checksum_hash)
    done = _meta_problems(cache, report)
    done_unknown = done is None
    if done is None:  # the done chunks cannot be read: every row is suspect
        done = np.ones(len(cache), dtype=bool)
    names = ["features"] + (["views"] if cache.num_views > 1 else [])
    bad: dict[int, BadRow] = {}
    if report.hash is not None:
        for a, b in cache.shards():
            for name in names:
                stored = cache.stored_checksums(name)[a:b]
                want = np.flatnonzero(done[a:b] & (stored != NONE)) + a
                if len(want) == 0:
                    continue
                file = shard_file(cache, name, a)
                root = _local_path(cache.url)
                if root is not None and not (root / file).exists():
                    reason = "shard file missing"
                    for r in want:
                        bad.setdefault(int(r), BadRow(int(r), str(cache.clip_id[r]), file, reason))
                    continue
                try:
                    x = cache.read_array(name, slice(a, b), verify=False)
                except CacheCorrupt as e:
                    for r in want:
                        bad.setdefault(int(r), BadRow(int(r), str(cache.clip_id[r]), file, str(e)))
                    continue
                report.bytes_checked += x.nbytes
                got = row_checksums(x[want - a], report.hash)
                for r in want[got != stored[want - a]]:
                    bad.setdefault(int(r), BadRow(int(r), str(cache.clip_id[r]), file, "bytes differ"))
            report.rows_checked += int(done[a:b].sum())
    report.bad = sorted(bad.values(), key=lambda b: b.row)
    if repair and (report.bad or done_unknown):
        with lock(url):
            report.repaired = cache.mark_not_done(
                np.arange(len(cache)) if done_unknown else np.array([b.row for b in report.bad])
            )
        report.problems = [p for p in report.problems if "done" not in p]
    report.seconds = time.perf_counter() - t0
    _save_state(cache, report)
    return report


def _save_state(cache, report: Report) -> None:
    """Record the outcome beside zarr.json, for `stecache info` (local caches only)."""
    from .lock import _local_path

    root = _local_path(cache.url)
    if root is None:
        return
    state = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ok": report.ok,
        "rows_checked": report.rows_checked,
        "damaged": len(report.bad),
        "problems": len(report.problems),
        "repaired": report.repaired,
    }
    try:
        tmp = root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(root / STATE_FILE)
    except OSError:  # a read-only cache can still be verified
        pass


def state_line(cache) -> str:
    """The `info` line on checksums and the last verify."""
    from .lock import _local_path

    if cache.checksum_hash is None:
        return "none (made before stecache stored checksums; re-extract to add them)"
    line = f"{cache.checksum_hash} per clip, checked when read"
    root = _local_path(cache.url)
    try:
        s = json.loads((root / STATE_FILE).read_text()) if root is not None else None
    except (OSError, json.JSONDecodeError):
        s = None
    if not s:
        return line + "; never verified (`stecache verify CACHE`)"
    verdict = "ok" if s.get("ok") else f"{s.get('damaged', '?')} damaged clip(s)"
    if s.get("repaired"):
        verdict += f", {s['repaired']} marked not done"
    return line + f"; last verify {s.get('time')}: {verdict} ({s.get('rows_checked')} clips)"


def check_rows(cache, name: str, rows: np.ndarray, x: np.ndarray, got: np.ndarray | None = None) -> None:
    """Raise CacheCorrupt if rows `rows` read as `x` [len(rows), ...] do not match their checksums
    (`got`: their checksums, when the reader hashed them as it read)."""
    stored = cache.stored_checksums(name)
    if stored is None:
        return
    want = stored[rows]
    have = want != NONE
    if not have.any():
        return
    if got is not None:
        got = got[have]
    else:
        got = row_checksums(x if have.all() else x[have], cache.checksum_hash)
    bad = np.flatnonzero(got != want[have])
    if len(bad):
        raise CacheCorrupt(mismatch_message(cache, name, np.unique(rows[have][bad])))
