"""The `Backbone` base class and the checkpoint reader shared by every encoder family.

A Backbone is a frozen nn.Module with the facts the pipeline needs (frames, sampling, preprocess, token
grid, channels, provenance). Subclasses implement `_encode(clips) -> (tokens, pooled)` in fp32 and, when
the token map alone is cheaper, `_tokens(clips)`. Checkpoints are read from local files only
(`torch.load(weights_only=True)` or `.safetensors`), unwrapped, cast to fp32 and loaded strictly.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from stecache.errors import CheckpointMismatch

RANDOM_SEED = 0  # random weights are seeded, so a resumed extraction (or predict) sees the same encoder


WRAPPERS = ("state_dict", "model_state", "model", "module")  # official / mmengine / slowfast / deepspeed
PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.")


class Backbone(nn.Module):
    """Frozen video encoder: normalised clips [B, 3, T, H, W] -> patch tokens [B, n, c, h, w]."""

    name: str
    frames: int
    size: int
    grid: tuple[int, int, int]
    channels: int
    config: dict
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_source: str | None = None  # hf://org/repo/path when the file came from the hub cache

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, T, H, W] -> (tokens [B, n, c, h, w], pooled [B, c]); runs inside inference mode."""
        raise NotImplementedError

    def _tokens(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B, n, c, h, w]; override when the token map alone is cheaper."""
        return self._encode(clips)[0]

    def _run(self, fn, clips: torch.Tensor):
        expected = (3, self.frames, self.size, self.size)
        if clips.ndim != 5 or tuple(clips.shape[1:]) != expected:
            raise ValueError(
                f"{self.name}: expected clips [B, 3, T={self.frames}, H={self.size}, W={self.size}], "
                f"got {list(clips.shape)}; sample with backbone.sampling and crop with backbone.preprocess"
            )
        device = next(self.parameters()).device
        clips = clips.to(device, torch.float32)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = fn(clips)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # [B, 3, T, H, W] -> [B, n, c, h, w]
        return self._run(self._tokens, clips)

    def pooled(self, clips: torch.Tensor) -> torch.Tensor:  # [B, 3, T, H, W] -> [B, c]
        """The official pooled vector (what the published classifier head consumes)."""
        return self._run(self._encode, clips)[1]

    def encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, n, c, h, w] and pooled [B, c] from one pass."""
        return self._run(self._encode, clips)

    @property
    def sampling(self):
        """Test-time frame sampling of this backbone's protocol (one clip)."""
        from stecache.video import Sampling

        return Sampling(**self.config["sampling"])

    @property
    def preprocess(self):
        """Resize / crop / mean-std (0-255 units) of this backbone's protocol."""
        from stecache.video import Preprocess

        return Preprocess(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in self.config["preprocess"].items()}
        )

    @property
    def test_views(self) -> tuple[int, int]:
        """(num_clips, num_crops) of the multi-view test protocol."""
        return tuple(self.config["test_views"])

    def provenance(self) -> dict:
        """Everything a cache needs to describe these features, JSON-able."""
        return {
            "name": self.name,
            "config": self.config,
            "weights": self.checkpoint_sha256 or "random",
            "random_seed": None if self.checkpoint_sha256 else RANDOM_SEED,
            "checkpoint": Path(self.checkpoint).name if self.checkpoint else None,  # name only: movable
            **({"checkpoint_source": self.checkpoint_source} if self.checkpoint_source else {}),
            "frames": self.frames,
            "sampling": self.sampling.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "test_views": list(self.test_views),
            "grid": list(self.grid),
            "channels": self.channels,
            "feature_layer": self.config["feature_layer"],
        }

    def freeze(self, device: str | torch.device) -> Backbone:
        """eval(), no gradients, moved to `device`."""
        return self.requires_grad_(False).eval().to(device)


def uniform_sampling(frames: int) -> dict:
    """The provenance `sampling` of an encoder that takes `frames` frames spread uniformly, one clip."""
    return {"rule": "uniform", "clip_len": frames, "frame_interval": 1, "num_clips": 1, "test_mode": True}


def warn_random(name: str) -> None:
    """Say loudly that weights are random: a UserWarning (stderr by default; one line in the CLI)."""
    msg = f"backbone {name!r} has RANDOM weights (no checkpoint given): features are meaningless"
    warnings.warn(msg, stacklevel=3)


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Iterable[Path]) -> str:
    """sha256 over several files (name + content digest each), for checkpoint directories."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint, unwrap `state_dict`/`model_state`/`model`/`module`, cast floats to fp32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatch(f"checkpoint {path}: no such file (stecache loads local files only)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise CheckpointMismatch(f"checkpoint {path}: cannot be read ({type(e).__name__}: {e})") from e
    for _ in range(3):  # nested wrappers, e.g. {"model": {"module": ...}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(
            f"checkpoint {path}: not a state dict (expected tensors, flat or under one of {list(WRAPPERS)})"
        )
    return {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}


def strip_prefixes(
    sd: dict[str, torch.Tensor], prefixes: Iterable[str] = PREFIXES
) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (`module.`, `_orig_mod.`, `backbone.`, `encoder.`) from every key."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def check_keys(sd: dict[str, torch.Tensor], want: dict[str, tuple], source: str | Path, what: str) -> None:
    """Raise CheckpointMismatch naming `source` unless `sd` has exactly the keys and shapes in `want`."""
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    shapes = sorted(
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(want[k])}"
        for k in set(want) & set(sd)
        if tuple(sd[k].shape) != tuple(want[k])
    )
    if not (missing or unexpected or shapes):
        return
    parts = [f"checkpoint {source} does not fit {what}"]
    for label, keys in (("wrong shapes", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            parts.append(
                f"{label}: "
                + ", ".join(keys[:12])
                + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            )
    if len(missing) > len(want) // 2:
        parts.append(f"most keys differ: is {Path(source).name} a checkpoint of another model?")
    raise CheckpointMismatch("; ".join(parts))


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `sd` into `module` strictly; on mismatch raise CheckpointMismatch listing keys and shapes."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_keys(sd, want, source, getattr(module, "name", type(module).__name__))
    module.load_state_dict(sd, strict=True)
