"""`--checkpoint hf://org/repo/path` from a hand-built hub cache, offline; the `stecache backbones` table."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_backbones import to_official, uniformer_ckpt

from stecache.backbones import BACKBONES, PREFIXES, hub, load, uniformer
from stecache.cli import cli
from stecache.cli.extract import BACKBONE_PREFIXES
from stecache.errors import CheckpointMismatch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo: str, filename: str, payload: dict) -> Path:
    """The hub cache layout: models--org--repo/{refs/main, snapshots/<commit>/<filename>}."""
    d = root / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(COMMIT)
    f = d / "snapshots" / COMMIT / filename
    f.parent.mkdir(parents=True)
    torch.save(payload, f)
    return f


@pytest.mark.slow  # a fresh interpreter, so HF_HUB_OFFLINE / HF_HUB_CACHE are read as a user sets them
def test_hf_checkpoint_offline_from_the_hub_cache(tmp_path):
    sd = to_official(uniformer_ckpt(uniformer.TINY, seed=2))
    f = hub_cache(tmp_path / "hub", "OpenGVLab/UniFormerV2-tiny", "k710/u8.pyth", sd)
    code = (
        "from stecache.backbones import load; import json; "
        "b = load('uniformerv2-tiny', checkpoint='hf://OpenGVLab/UniFormerV2-tiny/k710/u8.pyth'); "
        "p = b.provenance(); print(json.dumps([p['weights'], p['checkpoint'], p['checkpoint_source']]))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": str(Path(__file__).parents[1])}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    weights, name, source = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert weights == hashlib.sha256(f.read_bytes()).hexdigest()
    assert name == "u8.pyth" and source == "hf://OpenGVLab/UniFormerV2-tiny/k710/u8.pyth"


def test_hf_checkpoint_in_process(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    sd = to_official(uniformer_ckpt(uniformer.TINY, seed=2))
    f = hub_cache(tmp_path, "org/repo", "u8.pyth", sd)
    b = load("uniformerv2-tiny", checkpoint="hf://org/repo/u8.pyth")
    assert b.checkpoint_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert b.provenance()["checkpoint_source"] == "hf://org/repo/u8.pyth"
    with pytest.raises(CheckpointMismatch, match="hf://org/repo/missing.pth: not in the local hub cache"):
        load("uniformerv2-tiny", checkpoint="hf://org/repo/missing.pth")
    with pytest.raises(CheckpointMismatch, match="expected hf://<org>/<repo>/<path"):
        load("uniformerv2-tiny", checkpoint="hf://org/file.pth")
    assert hub.parse("hf://a/b@v1.0/x/y.pth") == ("a/b", "x/y.pth", "v1.0")


def test_backbones_command_lists_every_entry():
    out = CliRunner().invoke(cli, ["backbones"])
    assert out.exit_code == 0
    lines = out.output.splitlines()
    for name in [*BACKBONES, "image:<dir>", "hf:<dir>", "timm:<model>"]:
        assert any(line.split()[0] == name for line in lines), name
    assert any(
        line.startswith("videomaev2 ") and "[8, 768, 14, 14]" in line and "T=16" in line for line in lines
    )
    assert any(
        line.startswith("uniformerv2 ") and "[8, 768, 14, 14]" in line and "T=8" in line for line in lines
    )
    assert BACKBONE_PREFIXES == PREFIXES
    from stecache.extract import default_cache_path

    assert default_cache_path("hf:ckpt/videomae-base").name == "cache-hf-videomae-base.zarr"
    assert default_cache_path("timm:resnet50").name == "cache-timm-resnet50.zarr"
    bad = CliRunner().invoke(cli, ["extract", "--backbone", "hf:"])
    assert bad.exit_code == 2 and "hf:<dir>" in bad.output
    bad = CliRunner().invoke(cli, ["extract", "--backbone", "videomaev2-tiny", "--checkpoint", "nope.pth"])
    assert bad.exit_code == 2 and "no such file" in bad.output
    bad = CliRunner().invoke(cli, ["extract", "--backbone", "videomaev2-tiny", "--frames", "0"])
    assert bad.exit_code == 2 and "--frames" in bad.output
