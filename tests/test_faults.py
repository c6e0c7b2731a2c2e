"""Fault injection (issue 14): kills at every write of train-head and ablate resume identically; torn
results lines; two writers; malicious pickles never run; RAM vs streamed; non-finite losses and values.

A kill is simulated by raising a BaseException at the k-th durable write (runio.commit: every file
renamed into place; runio.append_record: the results line), which leaves the disk exactly as a SIGKILL
between two writes would (the temp file of the interrupted write included). Then the same call is re-run
and everything it leaves must equal an uninterrupted run: metrics.json byte for byte, log.jsonl and the
results line except wall-clock timings, best/last weights bit for bit, no temp file. `COUNTS` tallies the
points tried and identical (printed with -s).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from stecache import data as D
from stecache import runio
from stecache import sweep as S
from stecache import train as T
from stecache.errors import NonFiniteLoss, RunBusy, TrainError

CFG = dict(head="stemean", depth=1, epochs=3, batch_size=8, lr=0.05)  # stemean: dropout, so RNG state matters
# how the run was executed, not its result: wall-clock timings, folder, heads sharing its pass
TIMING = {"seconds", "train_seconds", "data_wait_seconds", "run_dir", "heads_in_pass"}
COUNTS: dict[str, list[int]] = {}  # name -> [points tried, identical]


class Killed(BaseException):
    """A simulated SIGKILL: not an Exception, so nothing in stecache catches it."""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    """48 clips (≈29 train / 10 val / 10 test), tiny features, 8 clips per shard."""
    url = str(tmp_path_factory.mktemp("faults") / "toy.zarr")
    D.toy_cache(url, n_clips=48, feature_shape=(2, 8, 2, 2), shard_size=8, signal=1.5)
    return url


def _kill_at(monkeypatch, k: int, torn: bool = False) -> list[int]:
    """Raise Killed at the k-th durable write (1-based); torn: a results line is half written first."""
    calls = [0]
    real_commit, real_append = runio.commit, runio.append_record

    def commit(tmp, path):
        calls[0] += 1
        if calls[0] == k:
            raise Killed(f"before renaming {path.name}")
        return real_commit(tmp, path)

    def append(path, record, same=None):
        calls[0] += 1
        if calls[0] == k:
            if torn:
                with open(path, "a") as f:
                    f.write(json.dumps(record)[:40])
            raise Killed("appending the results line")
        return real_append(path, record, same)

    monkeypatch.setattr(runio, "commit", commit)
    monkeypatch.setattr(runio, "append_record", append)
    return calls


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMING}


def _snapshot(run: Path) -> dict:
    """What a finished run leaves, without wall-clock timings."""
    log = [_strip(json.loads(line)) for line in (run / "log.jsonl").read_text().splitlines()]
    results = [_strip(r) for r in runio.read_records(run.parent / "results.jsonl") if r["run"] == run.name]
    raw = (run.parent / "results.jsonl").read_bytes()
    return {
        "log": log,
        "metrics": (run / "metrics.json").read_text(),
        "results": results,
        "results_whole_lines": raw.endswith(b"\n") and all(json.loads(x) for x in raw.splitlines()),
        "best": load_file(str(run / "best.safetensors")),
        "last": load_file(str(run / "last.safetensors")),
        "temps": sorted(p.name for p in run.parent.rglob(f"*{runio.TMP_SUFFIX}")),
        "config": json.loads((run / "config.json").read_text())["config"],
    }


def _same(a: dict, b: dict) -> bool:
    tensors = ("best", "last")
    diff = [k for k in a if k not in tensors and a[k] != b[k]]
    if diff:
        return False
    return all(
        a[t].keys() == b[t].keys() and all(torch.equal(a[t][k], b[t][k]) for k in a[t]) for t in tensors
    )


def _tally(name: str, tried: int, same: int) -> None:
    c = COUNTS.setdefault(name, [0, 0])
    c[0] += tried
    c[1] += same
    print(f"fault injection {name}: {c[1]} identical of {c[0]} points tried")


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> tuple[dict, int]:
    """An uninterrupted run and the number of durable writes it makes."""
    out = tmp_path_factory.mktemp("ref") / "runs" / "run"
    mp = pytest.MonkeyPatch()
    calls = _kill_at(mp, 10**9)
    T.train(T.TrainConfig(**CFG), toy, out, progress=False)
    mp.undo()
    return _snapshot(out), calls[0]


# ---- kills ---------------------------------------------------------------------------------------------


def test_kill_at_every_write_of_train_head_resumes_identical(toy, reference, tmp_path, monkeypatch):
    ref, writes = reference
    assert writes == 1 + 3 * 3 + 2 + 1  # config; per epoch: log, last, resume (+ best when val improves); …
    same = 0
    for k in range(1, writes + 1):
        out = tmp_path / f"k{k}" / "runs" / "run"
        with monkeypatch.context() as m:
            _kill_at(m, k, torn=True)
            with pytest.raises(Killed):
                T.train(T.TrainConfig(**CFG), toy, out, progress=False)
        T.train(T.TrainConfig(**CFG), toy, out, progress=False)  # the same command again
        got = _snapshot(out)
        assert _same(got, ref), f"kill before write {k} of {writes}"
        same += 1
    _tally("train-head", writes, same)


@pytest.mark.parametrize("ram_then_stream", [True, False])
def test_ram_and_streamed_runs_and_resumes_across_modes_are_identical(
    toy, reference, tmp_path, monkeypatch, ram_then_stream
):
    """Same command, any free memory: identical results, also killed in one mode and resumed in the other."""
    ref, _ = reference
    first, second = (None, "1") if ram_then_stream else ("1", None)
    out = tmp_path / "runs" / "run"
    with monkeypatch.context() as m:
        if first:
            m.setenv("STECACHE_RAM_LIMIT", first)
        _kill_at(m, 8)  # inside epoch 3
        with pytest.raises(Killed):
            T.train(T.TrainConfig(**CFG), toy, out, progress=False)
    if second:
        monkeypatch.setenv("STECACHE_RAM_LIMIT", second)
    T.train(T.TrainConfig(**CFG), toy, out, progress=False)
    assert _same(_snapshot(out), ref)
    # and a whole streamed run (or RAM, resp.) from scratch
    whole = tmp_path / "runs" / "whole"
    T.train(T.TrainConfig(**CFG, ram_limit="1" if ram_then_stream else "1G"), toy, whole, progress=False)
    a, b = _snapshot(whole), ref
    assert a["metrics"] == b["metrics"] and a["log"] == b["log"]
    _tally("ram/streamed", 2, 2)


def _sweep_jobs(toy):
    return S.plan([toy], heads="meanfc,stemean:1", seeds=[0], base=dict(epochs=2, batch_size=8, lr=0.05))


def _sweep_snapshot(out: Path) -> dict:
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    return {p.name: _snapshot(p) for p in runs}


def _sweep_points(toy, tmp_path, monkeypatch, points) -> tuple[int, int]:
    ref_out = tmp_path / "ref"
    with monkeypatch.context() as m:
        calls = _kill_at(m, 10**9)
        S.run_sweep(_sweep_jobs(toy), ref_out, progress=False, echo=lambda s: None)
    writes = calls[0]
    ref = _sweep_snapshot(ref_out)
    assert len(ref) == 2 and len((ref_out / "results.jsonl").read_text().splitlines()) == 2
    ks = range(1, writes + 1) if points is None else points
    same = 0
    for k in ks:
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            _kill_at(m, k, torn=True)
            with pytest.raises(Killed):
                S.run_sweep(_sweep_jobs(toy), out, progress=False, echo=lambda s: None)
        S.run_sweep(_sweep_jobs(toy), out, progress=False, echo=lambda s: None)
        got = _sweep_snapshot(out)
        assert got.keys() == ref.keys() and all(_same(got[n], ref[n]) for n in ref), f"kill at write {k}"
        assert len((out / "results.jsonl").read_text().splitlines()) == 2
        same += 1
    return len(ks), same


def test_kill_at_some_writes_of_ablate_resumes_identical(toy, tmp_path, monkeypatch):
    tried, same = _sweep_points(toy, tmp_path, monkeypatch, [1, 5, 17, 20])  # config, epochs 1 and 2, finish
    _tally("ablate (fast subset)", tried, same)
    assert tried == same == 4


@pytest.mark.slow  # every write of a two-head sweep: ~20 kill points
def test_kill_at_every_write_of_ablate_resumes_identical(toy, tmp_path, monkeypatch):
    tried, same = _sweep_points(toy, tmp_path, monkeypatch, None)
    _tally("ablate", tried, same)
    assert tried >= 20 and same == tried  # two heads × (config, 2 epochs of logs/weights/state, finish)


# ---- results.jsonl -------------------------------------------------------------------------------------


def test_torn_results_line_is_skipped_and_repaired(toy, reference, tmp_path, caplog):
    from stecache.report import load_results

    ref, _ = reference
    runs = tmp_path / "runs"
    runs.mkdir()
    good = {"run": "other", "head": "meanfc", "seed": 0, "val": {}, "test": {}}
    (runs / "results.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:25])  # power loss
    assert runio.read_records(runs / "results.jsonl") == [good] and "torn last line" in caplog.text
    with pytest.warns(UserWarning, match="torn last line skipped"):
        assert load_results(runs / "results.jsonl") == [good]
    assert S.finished_runs(runs) == {"other"}
    T.train(T.TrainConfig(**CFG), toy, runs / "run", progress=False)
    lines = (runs / "results.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 2 and json.loads(lines[0]) == good and all(x.endswith("\n") for x in lines)
    assert _strip(json.loads(lines[1])) == ref["results"][0]
    # a whole record whose newline was lost is kept, completed
    (runs / "results.jsonl").write_text(json.dumps(good))
    runio.append_record(runs / "results.jsonl", {"run": "x"})
    assert runio.read_records(runs / "results.jsonl") == [good, {"run": "x"}]
    # a bad line in the middle is an error naming the line
    (runs / "results.jsonl").write_text("{oops\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=r"results.jsonl:1"):
        runio.read_records(runs / "results.jsonl")


# ---- two writers ---------------------------------------------------------------------------------------

HOLD = """
import sys, time
from stecache import runio
with runio.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_two_writers_on_a_run_folder_or_sweep_out_are_refused(toy, tmp_path):
    from stecache.cli import cli

    run = tmp_path / "runs" / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusy, match=rf"run folder is busy, pid {holder.pid} on .* is writing it"):
            T.train(T.TrainConfig(**CFG), toy, run, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
        args = ["train-head", "--head", "meanfc", "--cache", toy, "--epochs", "1", "--out", str(run)]
        r = CliRunner().invoke(cli, args)
        errors = [ln for ln in r.output.splitlines() if not ln.startswith("cache: ")]  # train-head's header
        assert r.exit_code == 1 and len(errors) == 1 and "busy" in errors[0], r.output
    finally:
        holder.kill()
        holder.wait()
    T.train(T.TrainConfig(**CFG), toy, run, progress=False)  # the holder died: its lock is gone
    # in one process (a second thread, a notebook): refused too, and the first lock survives
    with runio.lock(tmp_path / "abl", "sweep folder"):
        with pytest.raises(RunBusy, match="sweep folder is busy, this process"):
            S.run_sweep(_sweep_jobs(toy), tmp_path / "abl", progress=False, echo=lambda s: None)
        assert str((tmp_path / "abl").resolve()) in runio._HELD
    assert not runio._HELD


def test_lock_file_symlink_and_unusable_folders_are_one_line(toy, tmp_path):
    from stecache.cli import cli
    from stecache.errors import RunError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "crafted").mkdir()
    (tmp_path / "crafted" / ".lock").symlink_to(victim)
    with pytest.raises(RunError, match="cannot create or lock"):
        T.train(T.TrainConfig(**CFG), toy, tmp_path / "crafted", progress=False)
    assert victim.read_text() == "precious"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "results.jsonl").symlink_to(victim)
    with pytest.raises(RunError, match="cannot append"):
        T.train(T.TrainConfig(**CFG), toy, tmp_path / "runs" / "r", progress=False)
    assert victim.read_text() == "precious"
    for args in (["train-head", "--head", "meanfc", "--cache", toy, "--out", "/dev/null"],
                 ["ablate", toy, "--heads", "meanfc", "--seeds", "0", "--out", str(victim)]):  # fmt: skip
        r = CliRunner().invoke(cli, args)
        _one_line_or_ok(r, args[0])
        assert r.exit_code == 1 and "cannot create or lock" in r.output


def test_stale_temp_files_are_cleaned_on_start(toy, tmp_path):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    for name in ("resume.safetensors.tmp", "log.jsonl.tmp", "best.safetensors.tmp"):
        (run / name).write_bytes(b"half a file")
    T.train(T.TrainConfig(**CFG), toy, run, progress=False)
    assert not list(run.glob("*.tmp"))


# ---- malicious pickles ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates the marker file: proof that code from a file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


RUN_FILES = ("last.pt", T.RESUME_FILE, "best.safetensors", "last.safetensors", "config.json", "metrics.json",
             "log.jsonl")  # fmt: skip


def _one_line_or_ok(r, what: str, progress: bool = False) -> None:
    """Exit 0, or exit 1 with one line (the last, after progress lines if `progress`) and no traceback."""
    assert r.exception is None or isinstance(r.exception, SystemExit), (what, r.exception)
    assert "Traceback" not in r.output, what
    if r.exit_code:
        lines = [ln for ln in r.output.strip().splitlines() if not ln.startswith("cache: ")]  # the header
        assert r.exit_code == 1 and (progress or len(lines) == 1), (what, r.output)
        assert lines[-1].startswith("Error: ") and len(lines[-1]) < 300, (what, r.output)


def test_malicious_pickle_in_a_run_folder_never_runs(toy, reference, tmp_path):
    from stecache.cli import cli

    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"head": Payload(marker)}, buf)  # what a crafted last.pt looks like
    evil = buf.getvalue()
    torch.load(_write(tmp_path / "probe.pt", evil), weights_only=False)  # the payload is live
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    runs = tmp_path / "runs"
    T.train(T.TrainConfig(**CFG), toy, runs / "good", progress=False)
    (runs / "good" / "last.pt").write_bytes(evil)  # an old-style checkpoint: never loaded
    runner = CliRunner()
    video = _write(tmp_path / "clip.mp4", b"not a video")
    train_args = ["train-head", "--head", "stemean", "--depth", "1", "--cache", toy, "--epochs", "3",
                  "--batch-size", "8", "--lr", "0.05"]  # fmt: skip
    tried = 0
    for name in RUN_FILES:
        run = runs / name.replace(".", "_")
        shutil.copytree(runs / "good", run)
        (run / name).write_bytes(evil)
        commands = {
            "train-head": [*train_args, "--out", str(run)],
            "evaluate": ["evaluate", str(run)],
            "predict": ["predict", str(run), str(video)],
            "export": ["export", str(run), "--head-only", "--out", str(tmp_path / "x" / "h.pt")],
            "report": [
                "report",
                "--correlation",
                str(run),
                "--out",
                str(tmp_path / "rep"),
                "--max-clips",
                "4",
            ],
        }
        for what, args in commands.items():
            r = runner.invoke(cli, args)
            _one_line_or_ok(r, f"{what} with a pickle as {name}")
            assert not marker.exists(), f"{what} ran code from {name}"
            tried += 1
    # ablate: a crafted --out (pickled results.jsonl; run folders of the sweep's names holding pickles,
    # with and without config.json)
    out = tmp_path / "abl"
    jobs = _sweep_jobs(toy)
    from stecache.cache import open_cache

    names = [T.run_name(j.cfg, open_cache(toy)) for j in jobs]
    for i, n in enumerate(names):
        (out / n).mkdir(parents=True)
        for f in ("last.pt", T.RESUME_FILE):
            (out / n / f).write_bytes(evil)
        if i == 0:
            shutil.copy(runs / "good" / "config.json", out / n / "config.json")
    abl = ["ablate", toy, "--heads", "meanfc,stemean:1", "--seeds", "0", "--epochs", "2", "--batch-size", "8",
           "--set", "lr=0.05", "--out", str(out)]  # fmt: skip
    for results in (None, evil):
        if results:
            (out / "results.jsonl").write_bytes(evil)
        r = runner.invoke(cli, abl)
        _one_line_or_ok(r, "ablate", progress=True)
        assert not marker.exists(), "ablate ran code from its --out"
        tried += 1
    r = runner.invoke(cli, ["report", str(out / "results.jsonl"), "--out", str(tmp_path / "rep2")])
    _one_line_or_ok(r, "report")
    assert not marker.exists()
    _tally("malicious pickle (command x file)", tried + 1, tried + 1)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_damaged_resume_checkpoint_is_one_line(toy, reference, tmp_path):
    """Truncated, garbage, another run's, foreign safetensors: TrainError naming the file, nothing loaded."""
    from safetensors.torch import save_file

    runs = tmp_path / "runs"
    T.train(T.TrainConfig(**CFG), toy, runs / "a", progress=False, keep_checkpoints=True)
    T.train(T.TrainConfig(**{**CFG, "epochs": 4}), toy, runs / "b", progress=False, keep_checkpoints=True)
    ckpt = runs / "a" / T.RESUME_FILE
    good = ckpt.read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "garbage": os.urandom(1000),
        "another run's": (runs / "b" / T.RESUME_FILE).read_bytes(),
    }
    save_file({"head.w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    cases["foreign"] = (tmp_path / "foreign.safetensors").read_bytes()
    for what, data in cases.items():
        ckpt.write_bytes(data)
        (runs / "a" / "metrics.json").unlink(missing_ok=True)
        with pytest.raises(TrainError, match=rf"{T.RESUME_FILE}: not a resume checkpoint of this run") as e:
            T.train(T.TrainConfig(**CFG), toy, runs / "a", progress=False)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300, what
    # shapes that do not fit this head: a checkpoint of a bigger head with the same run key is refused
    ckpt.write_bytes(good)
    T.train(T.TrainConfig(**CFG), toy, runs / "a", progress=False)  # the good one resumes fine


# ---- non-finite values ---------------------------------------------------------------------------------


def test_one_nan_clip_stops_training_naming_it(tmp_path):
    from stecache.cache import open_cache

    url = str(tmp_path / "nan.zarr")
    D.toy_cache(url, n_clips=48, feature_shape=(2, 8, 2, 2), shard_size=8)
    cache = open_cache(url, "r+")
    row = int(cache.rows("train")[3])
    start = row - row % 8
    x = cache.read(slice(start, start + 8))
    x[row - start, 0, 0, 0, 0] = np.nan
    cache.write_shard(start, x, None, np.ones(8, bool), [""] * 8)
    with pytest.raises(NonFiniteLoss, match=rf"epoch 1, batch \d+: loss is nan; clips with non-finite "
                       rf"features: {cache.clip_id[row]}") as e:  # fmt: skip
        T.train(T.TrainConfig(**CFG), url, tmp_path / "runs" / "r", progress=False)
    assert len(str(e.value)) < 300
    assert not (tmp_path / "runs" / "r" / "best.safetensors").exists()
    jobs = S.plan([url], heads="meanfc", seeds=[0], base=dict(epochs=1, batch_size=8))
    with pytest.raises(NonFiniteLoss, match=cache.clip_id[row]):
        S.run_sweep(jobs, tmp_path / "abl", progress=False, echo=lambda s: None)


def test_the_once_an_epoch_loss_check_names_the_epoch():
    """On CUDA no step checks the loss (each check would sync): the epoch's sum, read back once, is."""
    assert T.epoch_loss(torch.tensor(2.5, dtype=torch.float64), 0) == 2.5
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(NonFiniteLoss, match=rf"^epoch 3: loss is {bad}; check the cache"):
            T.epoch_loss(torch.tensor(float(bad), dtype=torch.float64), 2)


def test_a_head_with_non_finite_weights_is_never_best(toy, reference, tmp_path, monkeypatch):
    ref, _ = reference
    assert json.loads(ref["metrics"])["best_epoch"] == 1  # epoch 1 wins unless its weights are "non-finite"
    acc = [e["val"]["acc1"] for e in ref["log"]]
    want = 2 + int(np.argmax(acc[1:]))  # the best of the later epochs (first of equals)
    calls = []
    real = T.finite_weights
    fake = lambda h: real(h) and bool(calls.append(1) or len(calls) > 1)
    monkeypatch.setattr(T.checkpoint, "finite_weights", fake)  # where keep_if_best (train and sweep) finds it
    m = T.train(T.TrainConfig(**CFG), toy, tmp_path / "r", progress=False)
    assert m["best_epoch"] == want
    calls.clear()
    jobs = S.plan([toy], heads="stemean:1", seeds=[0], base={k: v for k, v in CFG.items() if k != "head"})
    (res,) = S.run_sweep(jobs, tmp_path / "abl", progress=False, echo=lambda s: None)
    assert res["best_epoch"] == want


def test_non_finite_weights_are_never_best():
    head = torch.nn.Linear(2, 2)
    assert T.finite_weights(head)
    with torch.no_grad():
        head.weight[0, 0] = float("inf")
    assert not T.finite_weights(head)


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--lr", "inf"], "lr must be in"),
        (["--lr", "1e30"], "lr must be in"),
        (["--lr", "nan"], "lr must be in"),
        (["--weight-decay", "nan"], "weight_decay must be in"),
        (["--weight-decay", "-1"], "weight_decay must be in"),
        (["--seed", "-1"], "seed must be in"),
        (["--seed", str(2**64)], "seed must be in"),
        (["--data-seed", "-5"], "data_seed must be in"),
        (["--option", "dropout=NaN"], "dropout"),
        (["--option", "eps=Infinity"], "eps=inf must be a finite number"),
        (["--ram-limit", "lots"], "--ram-limit"),
        (["--epochs", "1000000"], "epochs must be in"),
    ],
)
def test_nonsense_hyper_parameters_are_one_line_and_write_nothing(toy, tmp_path, flags, match):
    from stecache.cli import cli

    args = ["train-head", "--head", "meanfc", "--cache", toy, "--runs", str(tmp_path / "runs"), *flags]
    r = CliRunner().invoke(cli, args)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.output
    if r.exit_code == 2:  # refused by the flag's own range (a usage error): the message names the flag
        assert flags[0] in errors[0], r.output
    else:
        assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and match in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_state_round_trip_is_exact(tmp_path):
    """runio.save_state/load_state: AdamW moments, steps and RNG states come back bit for bit."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        head(torch.randn(5, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    rng = torch.get_rng_state()
    runio.save_state(tmp_path / "s.safetensors", head, opt, rng, {"epoch": 3, "run": "x"})
    torch.manual_seed(1)
    head2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))
    opt2 = torch.optim.AdamW(head2.parameters(), lr=1e-2, weight_decay=0.05)
    st = runio.load_state(tmp_path / "s.safetensors", head2, opt2, {"run": "x"})
    assert st["meta"]["epoch"] == 3 and torch.equal(st["rng"], rng)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k]), (pid, k)
    for p, q in zip(head.parameters(), head2.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(TrainError, match="its run is not this run's"):
        runio.load_state(tmp_path / "s.safetensors", head2, opt2, {"run": "y"})
    small = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    with pytest.raises(TrainError, match="does not fit"):
        runio.load_state(
            tmp_path / "s.safetensors", small, torch.optim.AdamW(small.parameters()), {"run": "x"}
        )


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "f")], stdout=subprocess.PIPE,
                              env=env, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunBusy):
        with runio.lock(tmp_path / "f"):
            pass
    holder.send_signal(9)
    holder.wait()
    t0 = time.time()
    with runio.lock(tmp_path / "f"):
        pass
    assert time.time() - t0 < 5
