"""What a run folder gets after each epoch, and how a killed run resumes from it bit-identically.

`save_epoch` writes the log, the last weights, then `resume.safetensors` (weights, AdamW moments, RNG
states, history: runio.save_state) that claims the epoch done; `keep_if_best` writes `best.safetensors`
when the epoch's val score is the best so far. `resume_checkpoint` decides whether a folder's checkpoint
belongs to this run (same config and cache), `restore` validates and loads it, `drop_resume_state` removes
it once the run is finished. Python: `restore(resume_checkpoint(out, run_identity(cfg, cache), None), ...)`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .. import runio
from ..config import fingerprint
from ..errors import TrainError
from .config import TrainConfig

log = logging.getLogger(__name__)

RESUME_FILE = "resume.safetensors"  # the resume checkpoint (safetensors + JSON header, see runio.py)
# every file that only serves resuming (may go once a run is finished); last.pt: the pickle checkpoint of
# older versions, never loaded
RESUME_FILES = (RESUME_FILE, "last.pt")
FINISHED_FILES = ("config.json", "best.safetensors", "metrics.json")  # what a finished run keeps


def run_identity(cfg: TrainConfig, cache) -> dict:
    """What a resumed run must share with the run folder's: its config and the cache's fingerprint."""
    return {"config": cfg.to_dict(), "cache_fingerprint": cache.fingerprint}


def _identity(record: dict) -> tuple:
    """(config, cache fingerprint) of a run record: what a resumed run must share with the folder's.
    `ram_limit` is left out: results do not depend on it (one batch order in RAM and streamed)."""
    fp = record.get("cache_fingerprint") or (record.get("cache") or {}).get("fingerprint")
    config = record.get("config")
    config = {k: v for k, v in config.items() if k != "ram_limit"} if isinstance(config, dict) else config
    return config, fp


def cuda_rng_state(device) -> torch.Tensor | None:
    """The CUDA RNG state of `device` (dropout on the GPU), None on other devices."""
    return torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None


def finite_weights(head) -> bool:
    """Whether every parameter and buffer of `head` is finite (a head that is not can never be best)."""
    return all(bool(torch.isfinite(t).all()) for t in head.state_dict().values() if t.is_floating_point())


def keep_if_best(out: Path, head, score: float, best: float) -> bool:
    """Whether `score` beats `best` with finite weights; if so the head's weights become best.safetensors."""
    if score > best and finite_weights(head):
        runio.save_tensors(out / "best.safetensors", head.state_dict())
        return True
    return False


def save_epoch(out: Path, head, opt, rng, epoch: int, best: float, best_epoch: int, history: list,
               identity: dict, cuda_rng=None) -> None:  # fmt: skip
    """What a run folder holds after each epoch: the log, last weights, then the resume checkpoint that
    claims the epoch done (a kill before it redoes the epoch and rewrites the same log)."""
    runio.write_file(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    runio.save_tensors(out / "last.safetensors", head.state_dict())
    meta = {"run": fingerprint(_identity(identity)), "epoch": epoch + 1, "best": best,
            "best_epoch": best_epoch, "history": history}  # fmt: skip
    runio.save_state(out / RESUME_FILE, head, opt, rng, meta, cuda_rng)


def restore(ckpt: Path, head, opt, identity: dict, cfg: TrainConfig, cuda: bool = False) -> tuple:
    """Validate the resume checkpoint `ckpt` (this run's, shapes of this head and optimiser, a consistent
    history), then load it into head and optimiser; (rng state, history, best, best_epoch, epoch), plus
    the CUDA rng state when `cuda`."""
    st = runio.load_state(ckpt, head, opt, {"run": fingerprint(_identity(identity))})
    m = st["meta"]
    epoch, hist, best, best_epoch = m.get("epoch"), m.get("history"), m.get("best"), m.get("best_epoch")
    ok = (
        isinstance(epoch, int) and 1 <= epoch <= cfg.epochs and isinstance(hist, list) and len(hist) == epoch
        and all(isinstance(h, dict) for h in hist) and isinstance(best, (int, float))
        and isinstance(best_epoch, int) and (best_epoch == -1 or 1 <= best_epoch <= epoch)
    )  # fmt: skip
    if not ok:
        raise runio._bad(ckpt, "its epoch, history or best epoch are inconsistent")
    if best_epoch > 0 and not (ckpt.parent / "best.safetensors").is_file():
        raise runio._bad(ckpt, "best.safetensors of its best epoch is missing")
    out = st["rng"], hist, float(best), best_epoch, epoch
    return (*out, st["cuda_rng"]) if cuda else out


def resume_checkpoint(out: Path, identity: dict, resume: bool | None) -> Path | None:
    """The checkpoint to resume from, None to start over; refuses a folder holding a different run.
    Nothing is loaded here: restore() validates the checkpoint first."""
    ckpt, cfg_file = out / RESUME_FILE, out / "config.json"
    if resume is False or not cfg_file.exists():
        if resume:
            raise TrainError(f"--resume: {out} has no run to resume (no config.json)")
        return None
    try:
        old = json.loads(cfg_file.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainError(f"{cfg_file}: not a run config ({e}); use another --out or delete it") from None
    if _identity(old) != _identity(identity):
        new_cfg, old_cfg = _identity(identity)[0], _identity(old)[0]
        old_cfg = old_cfg if isinstance(old_cfg, dict) else {}
        diff = sorted(k for k in new_cfg if old_cfg.get(k) != new_cfg[k])
        what = f"config keys {diff}" if diff else "the cache"
        raise TrainError(f"{out} holds another run ({what} differ); use another --name/--out or delete it")
    if not ckpt.exists():
        if (out / "last.pt").exists():  # a pickle: never loaded
            log.warning("%s: last.pt of an older stecache is not loaded (pickle); starting over", out)
        if resume:
            raise TrainError(f"--resume: {out} has no checkpoint {RESUME_FILE}")
        return None
    return ckpt


def drop_resume_state(out: Path) -> None:
    """Remove a finished run's resume checkpoint (optimiser state, RNG, history); weights and logs stay."""
    for name in RESUME_FILES:
        (out / name).unlink(missing_ok=True)
