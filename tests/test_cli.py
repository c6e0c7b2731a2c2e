"""cli/: `python -m stecache` and `python -m stecache.cli` (what torchrun -m runs) are `stecache`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stecache.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["stecache", "stecache.cli"])
def test_python_dash_m_runs_the_command_line(module):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"Usage: python -m {module} [OPTIONS] COMMAND")
    listed = [line.split()[0] for line in run.stdout.split("Commands:\n")[1].splitlines()]
    assert listed == sorted(cli.commands) and len(listed) == 15
