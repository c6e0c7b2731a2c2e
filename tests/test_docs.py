"""The docs are the behaviour: README examples run as written, and documented CLI behaviour is tested.

`test_readme_commands_run` (slow) executes every command line of the ```sh / ```bash / ```shell blocks
(and the `$ ` lines of ```console blocks) in README.md and data/README.md, in order, in one empty working
directory, with this checkout's `stecache` first on the path; a command that exits non-zero fails the test,
and so does a third-party warning on its stderr. A block that cannot run here (checkpoints, GPUs, real
datasets, installs) is preceded by the marker `<!-- doc-test: skip REASON -->` on the line above its
opening fence. The other tests pin the exit codes, --per-class, Acc@5 and flag-naming promises of README.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stecache import metrics as M
from stecache.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "data/README.md"]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\b.*-->")
# third-party chatter: Python warnings, transformers notices, torch's glog-style "W1202 12:55:11" lines
NOISE = re.compile(r"(\w+Warning\b|warnings\.warn|^\[transformers\]|^[WE]\d{4} \d\d:\d\d:\d\d)")


def strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # at the start or after a space, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_commands(text: str, name: str = "doc") -> list[tuple[str, str]]:
    """[(where, command)] of the shell blocks of a markdown text, skipping marked blocks."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*([\w-]*)", lines[i])
        if not m:
            i += 1
            continue
        lang = m[1].lower()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1  # the closing fence
        if lang not in SHELL_LANGS or SKIP.search(prev):
            continue
        pending, first = "", 0
        for lineno, raw in body:
            if lang == "console":
                if not raw.lstrip().startswith("$ ") and not pending:
                    continue  # program output
                raw = raw.lstrip()[2:] if not pending else raw
            line = strip_comment(raw).strip()
            if not line and not pending:
                continue
            first = first or lineno
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            out.append((f"{name}:{first}", (pending + line).strip()))
            pending, first = "", 0
        if pending:
            out.append((f"{name}:{first}", pending.strip()))
    return out


def run_commands(commands: list[tuple[str, str]], cwd: Path, timeout: int = 900) -> None:
    """Run each command with bash in `cwd`; raise AssertionError at the first failure or noisy stderr."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    for where, cmd in commands:
        proc = subprocess.run(
            ["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        assert proc.returncode == 0, f"{where}: `{cmd}` exited {proc.returncode}\n{tail}"
        noise = [ln for ln in proc.stderr.splitlines() if NOISE.search(ln)]
        assert not noise, f"{where}: `{cmd}` printed third-party warnings:\n" + "\n".join(noise)


# ---- the parser and runner themselves --------------------------------------------------------------------

SAMPLE = """
Text.

```bash
stecache synth work/s   # a comment
stecache extract --backbone videomaev2-tiny \\
    --data work/s
# a whole-line comment

echo "a # inside quotes"
```

<!-- doc-test: skip needs a checkpoint -->
```bash
stecache extract --backbone videomaev2 --checkpoint CKPT
```

```console
$ stecache info work/c.zarr
cache work/c.zarr: 300 clips
```

```python
print("not shell")
```
"""


def test_doc_commands_parses_blocks_continuations_comments_and_skips():
    assert doc_commands(SAMPLE, "s") == [
        ("s:5", "stecache synth work/s"),
        ("s:6", "stecache extract --backbone videomaev2-tiny --data work/s"),
        ("s:10", 'echo "a # inside quotes"'),
        ("s:19", "stecache info work/c.zarr"),
    ]


def test_run_commands_fails_on_an_erroring_command_and_names_it(tmp_path):
    run_commands([("x:1", "true"), ("x:2", "echo ok > f")], tmp_path)
    assert (tmp_path / "f").read_text() == "ok\n"
    with pytest.raises(AssertionError, match=r"x:3: `ls no-such-file` exited 2"):
        run_commands([("x:3", "ls no-such-file"), ("x:4", "touch never")], tmp_path)
    assert not (tmp_path / "never").exists()  # stops at the first failure
    with pytest.raises(AssertionError, match="third-party warnings"):
        run_commands([("x:5", "echo 'foo.py:3: UserWarning: careful' >&2")], tmp_path)


def test_every_doc_has_runnable_commands():
    """The docs this test runs exist, and README has commands (a renamed fence would silently skip all)."""
    found = {doc: doc_commands((ROOT / doc).read_text(), doc) for doc in DOCS}
    assert len(found["README.md"]) >= 10


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """Every unmarked shell command of README.md and data/README.md, in order, in one empty folder."""
    commands = [c for doc in DOCS for c in doc_commands((ROOT / doc).read_text(), doc)]
    assert {where.split(":")[0] for where, _ in commands} == set(DOCS)  # both docs have runnable commands
    run_commands(commands, tmp_path)
    # what the documented commands promise is there: a cache, a trained run, a sweep and its HTML report
    made = ["work/cache-videomaev2-tiny.zarr/zarr.json", "runs/ste-d2/best.safetensors",
            "runs/abl/results.jsonl", "reports/report.html"]  # fmt: skip
    assert [p for p in made if not (tmp_path / p).is_file()] == [], sorted(p.name for p in tmp_path.iterdir())


# ---- documented CLI behaviour ----------------------------------------------------------------------------


def test_exit_codes_usage_2_bad_input_1_interrupted_130(tmp_path, monkeypatch):
    """README 'Exit codes': click usage errors 2, library errors 1 (one line, no traceback), Ctrl-C 130."""
    runner = CliRunner()
    for args in (
        ["no-such-command"],
        ["train-head", "--head", "nope"],
        ["synth"],
        ["heads", "--classes", "x"],
    ):
        r = runner.invoke(cli, args)
        assert r.exit_code == 2 and "Usage:" in r.output, (args, r.output)
    r = runner.invoke(cli, ["evaluate", str(tmp_path)])  # a folder that is not a run
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("stecache.synth.synthesize", interrupted)
    r = runner.invoke(cli, ["synth", str(tmp_path / "s")])
    assert r.exit_code == 130 and "interrupted" in r.output


def test_ram_limit_error_names_the_flag_or_the_variable(tmp_path, monkeypatch):
    from stecache import data as D

    D.toy_cache(str(tmp_path / "c.zarr"), n_clips=24, num_classes=3)
    monkeypatch.delenv("STECACHE_RAM_LIMIT", raising=False)
    args = ["train-head", "--head", "meanfc", "--cache", str(tmp_path / "c.zarr"), "--epochs", "1"]
    r = CliRunner().invoke(cli, [*args, "--ram-limit", "lots", "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "--ram-limit 'lots'" in r.output and "STECACHE_RAM_LIMIT" not in r.output
    monkeypatch.setenv("STECACHE_RAM_LIMIT", "lots")
    with pytest.raises(D.StecacheError, match="^STECACHE_RAM_LIMIT 'lots'"):
        D.ram_limit()
    with pytest.raises(D.StecacheError, match="^--memory 'x'"):
        D.ram_limit("x", "--memory")


def test_single_label_per_class_table_and_no_acc5_for_few_classes():
    """Hand-computed: targets 0 0 1 1 2, predictions 0 1 1 1 0 (3 classes, so Acc@5 is always 100 %)."""
    probs = np.eye(3)[[0, 1, 1, 1, 0]] * 0.8 + 0.1
    m = M.singlelabel_metrics(probs, np.array([0, 0, 1, 1, 2]))
    text = M.format_table({"run": "r", "split": "test", "clips": 5, "metrics": m}, ["a", "b", "c"])
    assert "acc5" not in text and "acc1" in text
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.startswith("      ")}
    # a: 1 of 2 right, predicted twice (1 right) -> acc 50, P 50; b: 2 of 2, predicted 3 times -> P 66.67
    assert rows["a"] == ["a", "acc", "50.00", "P", "50.00", "R", "50.00", "n=2"]
    assert rows["b"] == ["b", "acc", "100.00", "P", "66.67", "R", "100.00", "n=2"]
    assert rows["c"] == ["c", "acc", "0.00", "P", "0.00", "R", "0.00", "n=1"]  # never predicted: P 0
    m6 = M.singlelabel_metrics(np.eye(6)[[0, 1, 2, 3, 4, 5]], np.arange(6))
    assert "acc5" in M.format_table({"run": "r", "split": "test", "clips": 6, "metrics": m6})


def test_evaluate_per_class_prints_every_class_for_a_single_label_run(tmp_path):
    from stecache import data as D
    from stecache.train import TrainConfig, train

    D.toy_cache(str(tmp_path / "c.zarr"), n_clips=48, num_classes=3)
    train(TrainConfig(head="meanfc", epochs=2), str(tmp_path / "c.zarr"), tmp_path / "run", progress=False)
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run"), "--per-class"])
    assert r.exit_code == 0, r.output
    per_class = [ln for ln in r.output.splitlines() if " acc " in ln and " P " in ln]
    assert len(per_class) == 3 and "acc5" not in r.output


def test_under_torchrun_only_rank_0_prints_the_summary(tmp_path, monkeypatch):
    from stecache.errors import ExtractionFailed

    summary = {"cache": "c.zarr", "done": 3, "clips": 3, "extracted": 3, "already_done": 0,
               "failed": [], "seconds": 1.0, "per_rank": [2, 1]}  # fmt: skip
    monkeypatch.setattr("stecache.annotations.load_dataset_dir", lambda d: None)
    monkeypatch.setattr("stecache.extract.extract", lambda *a, **k: summary)
    args = ["extract", "--backbone", "videomaev2-tiny", "--data", str(tmp_path), "--cache", "c.zarr"]
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0 and ("3/3 clips done" in r.output) == printed, (rank, r.output)

    def failing(*a, **k):
        raise ExtractionFailed("1 of 3 clips failed")

    monkeypatch.setattr("stecache.extract.extract", failing)
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1 and ("1 of 3 clips failed" in r.output) == printed, (rank, r.output)


def test_make_clean_keeps_the_venv_and_distclean_removes_it():
    dry = {
        t: subprocess.run(["make", "-n", t], cwd=ROOT, capture_output=True, text=True).stdout
        for t in ("clean", "distclean")
    }
    assert ".venv" not in dry["clean"] and "work" in dry["clean"]
    assert "rm -rf .venv" in dry["distclean"]
    makefile = (ROOT / "Makefile").read_text()
    install = makefile.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    assert "--quiet $(TORCH)" not in install and "--quiet -e" not in install  # progress is shown


def test_pipelines_readme_states_the_scripts_defaults():
    text = (ROOT / "pipelines/README.md").read_text()
    for script in ("ablation_synth.sh", "tables_full.sh"):
        epochs = re.search(r"EPOCHS=\$\{EPOCHS:-(\d+)\}", (ROOT / "pipelines" / script).read_text())[1]
        assert f"{epochs} {'synthetic' if 'synth' in script else 'full'}" in text, script
