"""`hf://<org>/<repo>[@<revision>]/<path>` checkpoints, resolved through the Hugging Face hub cache.

`resolve("hf://OpenGVLab/VideoMAEv2-Base/vit_b_k710_dl_from_giant.pth")` returns the local file path:
downloaded into the hub cache when online, read from it when offline (`HF_HUB_OFFLINE=1`, or no
network). The file is then read like any local checkpoint (its sha256 goes into the provenance).
"""

from __future__ import annotations

from pathlib import Path

from stecache.errors import CheckpointMismatch

SCHEME = "hf://"


def is_hub(checkpoint: str | Path | None) -> bool:
    """True for an `hf://` checkpoint reference."""
    return isinstance(checkpoint, str) and checkpoint.startswith(SCHEME)


def parse(url: str) -> tuple[str, str, str | None]:
    """`hf://org/repo[@rev]/path/in/repo` -> (repo_id, filename, revision)."""
    parts = url.removeprefix(SCHEME).split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointMismatch(f"checkpoint {url}: expected hf://<org>/<repo>/<path in the repo>")
    repo, _, rev = parts[1].partition("@")
    return f"{parts[0]}/{repo}", "/".join(parts[2:]), rev or None


def resolve(url: str) -> Path:
    """The local path of an `hf://` file (hub cache; downloaded only when online)."""
    repo_id, filename, revision = parse(url)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise CheckpointMismatch(
            f"checkpoint {url}: needs huggingface_hub (pip install huggingface_hub)"
        ) from e
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as e:  # noqa: BLE001 - offline miss, unknown repo, auth: one clear line
        raise CheckpointMismatch(
            f"checkpoint {url}: not in the local hub cache and not downloadable "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
