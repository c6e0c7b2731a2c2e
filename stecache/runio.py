"""Run-folder I/O that survives kills, power loss and neighbours; nothing in a run folder is unpickled.

- `write_file` / `save_tensors`: temp file + fsync + rename + fsync of the folder: a kill leaves the old or
  the new file.
- `append_record` / `read_records`: results.jsonl lines appended whole (one write, trailing newline,
  fsync) under an advisory lock; a torn last line (power loss, full disk) is reported and skipped when
  read, and cut off (or completed) by the next append.
- `lock`: one writer per run folder or sweep --out (POSIX lockf on `<folder>/.lock`, as the cache lock in
  cache.lock: the kernel drops it when its holder dies, SIGKILL included); a second writer gets RunBusy.
- `save_state` / `load_state`: the resume checkpoint, `resume.safetensors`: head weights, AdamW moments
  and RNG states as tensors, everything else as JSON in the safetensors header; validated against the
  head and optimiser it is loaded into (names, shapes, dtypes, param groups) before anything is copied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import RunBusy, RunError, TrainError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"  # every temp file stecache writes in a run folder or sweep --out ends with it
STATE_FORMAT = "stecache-resume-1"
_HELD: set[str] = set()  # folders locked by this process (lockf does not conflict within one process)


# ---- files ---------------------------------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_file(path: Path, data: str | bytes) -> None:
    """Write `path` atomically and durably."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    commit(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file (e.g. a head's state_dict) atomically and durably."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + TMP_SUFFIX)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    commit(tmp, path)


def clean_temps(folder: Path) -> list[Path]:
    """Delete temp files a killed writer left in `folder` (call while holding its lock); the list removed."""
    gone = []
    for p in Path(folder).glob(f"*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    if gone:
        log.info("removed %d temp file(s) of an interrupted run in %s", len(gone), folder)
    return gone


# ---- results.jsonl -------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict]:
    """The JSON lines of `path` (none if missing); a torn last line (no trailing newline, not JSON) is
    reported and skipped. A bad line elsewhere raises ValueError naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines):  # no newline after it: a write cut short
                log.warning("%s:%d: torn last line (%d bytes) skipped; the next run rewrites it", path, i,
                            len(line))  # fmt: skip
                continue
            raise ValueError(f"{path}:{i}: not a JSON record ({e})") from None
        out.append(rec)
    return out


def append_record(path: Path, record: dict, same=None) -> bool:
    """Append `record` as one JSON line to `path`, durably, unless a line `same(old)` holds; True if written.

    Under an exclusive flock on the file (neighbours appending to one runs root wait their turn). A torn
    last line is cut off first; a last line that is whole JSON but lacks its newline gets the newline.
    """
    line = (json.dumps(record, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise RunError(f"{path}: cannot append the run's results ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
                os.pwrite(fd, b"\n", size)  # whole record, newline lost: complete it
                data += b"\n"
            except ValueError:
                log.warning("%s: torn last line (%d bytes) removed", path, size - cut)
                os.ftruncate(fd, cut)
                data = data[:cut]
        if same is not None:
            for raw in data.splitlines():
                try:
                    if same(json.loads(raw)):
                        return False
                except (ValueError, AttributeError):
                    continue
        os.pwrite(fd, line, len(data))
        os.fsync(fd)
        return True
    finally:
        os.close(fd)  # releases the flock


# ---- locks ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def lock(folder: str | Path, what: str = "run folder") -> Iterator[None]:
    """Hold `<folder>/.lock` (created with the folder) and clean its temp files; RunBusy if held."""
    folder = Path(folder)
    key = str(folder.resolve())
    busy = f"{folder}: {what} is busy, {{}} is writing it; wait for it to finish or use another folder"
    if key in _HELD:  # never open the lock file twice in one process: closing it would drop the lock
        raise RunBusy(busy.format(f"this process (pid {os.getpid()})"))
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # never through a symlink (a crafted folder could aim it at a file we would truncate)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise RunError(f"{folder}: cannot create or lock this {what} ({e.strerror or e})") from None
    with open(fd, "r+", errors="replace") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise RunError(f"{folder}: cannot lock this {what} ({e.strerror or e})") from None
            f.seek(0)
            raise RunBusy(busy.format(f.read().strip()[:100] or "another process")) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        _HELD.add(key)
        try:
            clean_temps(folder)
            yield
        finally:
            _HELD.discard(key)
            if created and os.listdir(folder) == [".lock"]:  # a run that failed before writing leaves nothing
                os.unlink(folder / ".lock")
                folder.rmdir()
            fcntl.lockf(f, fcntl.LOCK_UN)


# ---- the resume checkpoint -----------------------------------------------------------------------------


def save_state(path: Path, head, opt, rng: torch.Tensor, meta: dict, cuda_rng: torch.Tensor | None = None):
    """Write the resume checkpoint: tensors in safetensors, `meta` (JSON-able) and the optimiser's
    non-tensor state in its header."""
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    sd = opt.state_dict()
    plain: dict = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                plain.setdefault(str(pid), {})[k] = v
    tensors["rng"] = rng
    if cuda_rng is not None:
        tensors["cuda_rng"] = cuda_rng
    header = {"format": STATE_FORMAT, "meta": meta, "param_groups": sd["param_groups"], "optim_plain": plain}
    tmp = path.with_name(path.name + TMP_SUFFIX)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"stecache": json.dumps(header)})  # fmt: skip
    commit(tmp, path)


def read_state_meta(path: Path) -> dict:
    """The JSON header of a resume checkpoint (reads no tensor); TrainError if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {}).get("stecache", "null"))
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged file is the same verdict
        raise _bad(path, f"unreadable ({type(e).__name__})") from None
    if (
        not isinstance(header, dict)
        or header.get("format") != STATE_FORMAT
        or not isinstance(header.get("meta"), dict)
    ):
        raise _bad(path, "no stecache resume header")
    return header


def load_state(path: Path, head, opt, expect_meta: dict) -> dict:
    """Validate the checkpoint at `path` against `head`, `opt` and `expect_meta` (keys that must be equal),
    then load head weights and optimiser state; returns {"meta", "rng", "cuda_rng"}."""
    from safetensors import safe_open

    header = read_state_meta(path)
    meta = header["meta"]
    for k, v in expect_meta.items():
        if meta.get(k) != v:
            raise _bad(path, f"its {k} is not this run's")
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001
        raise _bad(path, f"unreadable ({type(e).__name__})") from None
    head_sd = head.state_dict()
    want = {f"head.{k}": (tuple(v.shape), v.dtype) for k, v in head_sd.items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    fresh = opt.state_dict()["param_groups"]
    groups = header.get("param_groups")
    if not isinstance(groups, list) or [g.get("params") for g in groups if isinstance(g, dict)] != [
        g["params"] for g in fresh
    ]:
        raise _bad(path, "its optimiser parameter groups differ from this head's")
    state: dict = {}
    for name, t in tensors.items():
        if name.startswith("head."):
            if want.get(name) != (tuple(t.shape), t.dtype):
                raise _bad(path, f"tensor {name} {tuple(t.shape)} does not fit this head")
        elif name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            if not pid.isdigit() or int(pid) >= len(params):
                raise _bad(path, f"tensor {name} names no parameter")
            p = params[int(pid)]
            if key != "step" and tuple(t.shape) != tuple(p.shape):
                raise _bad(path, f"tensor {name} {tuple(t.shape)} does not fit parameter {tuple(p.shape)}")
            state.setdefault(int(pid), {})[key] = t
        elif name not in ("rng", "cuda_rng"):
            raise _bad(path, f"unexpected tensor {name}")
    if set(want) - set(tensors) or "rng" not in tensors or tensors["rng"].dtype != torch.uint8:
        raise _bad(path, "head weights or RNG state missing")
    plain = header.get("optim_plain") or {}
    for pid, extra in plain.items() if isinstance(plain, dict) else ():
        if pid.isdigit() and int(pid) in state and isinstance(extra, dict):
            state[int(pid)].update(extra)
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    head.load_state_dict({k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")})
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise _bad(path, f"optimiser state rejected ({e})") from None
    return {"meta": meta, "rng": tensors["rng"], "cuda_rng": tensors.get("cuda_rng")}


def _bad(path: Path, why: str) -> TrainError:
    return TrainError(f"{path}: not a resume checkpoint of this run: {why}; delete it to start the run over")
