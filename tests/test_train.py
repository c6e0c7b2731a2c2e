"""train/: every head learns a synthetic cache, the schedule, resume after SIGKILL, errors, CLI, DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
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
from stecache import metrics as M
from stecache import train as T
from stecache.cache import Row, create_cache
from stecache.errors import CacheIncomplete, CacheMismatch, EmptySplit, HeadConfigError, RunError, TrainError

DEPTH = {"meanfc": 0, "tr": 1, "ste": 1, "stemean": 1, "patch": 0}
FAST = dict(epochs=6, batch_size=16, lr=0.05)  # lr 0.05/256·16 ≈ 3e-3 after scaling


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    """200 clips of 4 classes (120 train / 40 val / 40 test), 2 views."""
    url = str(tmp_path_factory.mktemp("train") / "toy.zarr")
    D.toy_cache(url, n_clips=200, num_views=2, signal=1.5)
    return url


def test_lr_schedule():
    cfg = T.TrainConfig(epochs=10, warmup_epochs=5, lr=1e-3, batch_size=128)  # warm-up capped at 10//5 = 2
    assert cfg.scaled_lr == pytest.approx(5e-4) and cfg.warmup == 2
    lrs = [T.lr_at(cfg, s, steps_per_epoch=4) for s in range(40)]
    assert lrs[:8] == pytest.approx([5e-4 * (i + 1) / 8 for i in range(8)])  # linear warm-up over 8 steps
    assert lrs[8] == pytest.approx(5e-4)  # cosine starts at the peak
    assert lrs[8 + 16] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 16 / 32)))
    assert lrs[-1] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 31 / 32)))
    assert T.TrainConfig(epochs=100).warmup == 5


@pytest.mark.parametrize("head", sorted(DEPTH))
def test_every_head_beats_chance(toy, tmp_path, head):
    m = T.train(T.TrainConfig(head=head, depth=DEPTH[head], **FAST), toy, runs_root=tmp_path, progress=False)
    # 40 val clips, 4 classes: chance 0.25; P(acc ≥ 0.7 by luck) = P(Binom(40, .25) ≥ 28) < 1e-9,
    # while every head reaches ≥ 0.95 here
    assert m["val"]["acc1"] >= 0.7, m["val"]
    assert m["test"]["acc1"] >= 0.7, m["test"]
    run = Path(m["run_dir"])
    files = ("config.json", "log.jsonl", "metrics.json", "best.safetensors", "last.safetensors")
    for name in (*files, "confusion.png"):
        assert (run / name).exists(), name
    assert not [f for f in T.RESUME_FILES if (run / f).exists()]  # a finished run drops its resume state
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, 7))
    assert {"loss", "lr", "val", "seconds", "data_wait_seconds"} <= set(log[0])
    rec = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert rec["head"] == head and rec["test"]["acc1"] == m["test"]["acc1"]
    assert rec["cache_fingerprint"] == json.loads((run / "config.json").read_text())["cache"]["fingerprint"]


def test_metrics_are_recomputable(toy, tmp_path):
    """metrics.json equals metrics recomputed by hand from the saved best weights (views averaged)."""
    m = T.train(T.TrainConfig(head="patch", depth=0, **FAST), toy, runs_root=tmp_path, progress=False)
    run = Path(m["run_dir"])
    from stecache.cache import open_cache
    from stecache.heads import build_head

    cache = open_cache(toy)
    head = build_head("patch", cache.feature_shape, 4, 0)
    head.load_state_dict(load_file(str(run / "best.safetensors")))
    head.eval()
    rows = cache.rows("test")
    x = torch.from_numpy(cache.read_views(rows).astype(np.float32))  # [M, 2, n, c, h, w]
    with torch.no_grad():
        probs = (head(x[:, 0]).softmax(-1) + head(x[:, 1]).softmax(-1)) / 2
    y = cache.label_index()[rows]
    acc = float((probs.argmax(1).numpy() == y).mean())
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test"]["acc1"] == pytest.approx(acc)
    assert saved["best_epoch"] == 1 + int(np.argmax([e["val"]["acc1"] for e in _log(run)]))
    again = T.evaluate(run, "test")
    assert again["metrics"]["acc1"] == saved["test"]["acc1"]
    assert again["metrics"]["confusion"] == saved["test"]["confusion"]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_multi_label_run(tmp_path, monkeypatch):
    url = str(tmp_path / "ml.zarr")
    cache = D.toy_cache(url, n_clips=200, multi_label=True, signal=1.5)
    plotted = []
    plot = M.plot_metrics
    monkeypatch.setattr(M, "plot_metrics", lambda m, *a, **k: plotted.append(m) or plot(m, *a, **k))
    m = T.train(T.TrainConfig(head="ste", depth=1, **FAST), url, runs_root=tmp_path, progress=False)
    assert plotted == [m["test_tuned"]]  # per_class_f1.png at the val-tuned threshold, as the reports lead
    p = cache.labels()[cache.rows("val")].mean(0)
    all_positive = float((2 * p / (1 + p)).mean())  # macro-F1 of predicting every class: ≈ 0.49
    assert m["val"]["macro_f1"] > all_positive + 0.25
    assert {"threshold", "val_tuned", "test", "test_tuned"} <= set(m)
    assert m["threshold"] in M.THRESHOLD_GRID
    assert (Path(m["run_dir"]) / "per_class_f1.png").exists()


def test_errors(toy, tmp_path):
    with pytest.raises(HeadConfigError, match="unknown head"):
        T.train(T.TrainConfig(head="nope"), toy, runs_root=tmp_path)
    with pytest.raises(HeadConfigError, match="depth"):
        T.train(T.TrainConfig(head="tr", depth=0), toy, runs_root=tmp_path)
    with pytest.raises(HeadConfigError, match="does not tile"):
        T.train(
            T.TrainConfig(head="ste", depth=1, head_options={"patch": [3, 2, 2]}), toy, runs_root=tmp_path
        )
    with pytest.raises(TrainError, match="train_views"):
        T.TrainConfig(train_views="some")

    partial = str(tmp_path / "partial.zarr")
    D.toy_cache(partial, n_clips=24, shard_size=8, pending_shards=1)
    with pytest.raises(CacheIncomplete, match="not extracted yet"):
        T.train(T.TrainConfig(), partial, runs_root=tmp_path)

    def tiny_cache(name, splits, labels, class_names=("a", "b", "c")):
        url = str(tmp_path / name)
        clips = [Row(f"c{i}", (lab,), s) for i, (lab, s) in enumerate(zip(labels, splits, strict=True))]
        c = create_cache(url, clips=clips, class_names=list(class_names), multi_label=False,
                         feature_shape=(2, 4, 2, 2), num_views=1, provenance={"backbone": "t"})  # fmt: skip
        c.write_shard(
            0, np.zeros((len(clips), 2, 4, 2, 2)), None, np.ones(len(clips), bool), [""] * len(clips)
        )
        return url

    no_c = tiny_cache("noc.zarr", ["train", "train", "val", "val"], [0, 1, 2, 0])
    with pytest.raises(TrainError, match="1 class\\(es\\) \\(c\\) have no training clips"):
        T.train(T.TrainConfig(head="meanfc"), no_c, runs_root=tmp_path)
    one = tiny_cache("one.zarr", ["train", "val"], [0, 0], ["walk"])  # was trained and reported 100 % acc1
    with pytest.raises(TrainError, match=r"one class \(walk\) has nothing to classify"):
        T.train(T.TrainConfig(head="meanfc"), one, runs_root=tmp_path)
    many = tiny_cache("many.zarr", ["train", "val"], [0, 1], [f"class{k}" for k in range(128)])  # mmaction2's
    with pytest.raises(TrainError) as e:  # rawframe test list: label 127 only; the reason must fit one line
        T.train(T.TrainConfig(head="meanfc"), many, runs_root=tmp_path)
    assert "127 class(es) (class1, class2, class3, class4, class5 and 122 more) have no" in str(e.value)
    assert len(str(e.value)) < 280  # the CLI cuts longer lines
    no_val = tiny_cache("noval.zarr", ["train"] * 3, [0, 1, 2])
    with pytest.raises(EmptySplit, match="no extracted clips in split 'val'"):
        T.train(T.TrainConfig(head="meanfc"), no_val, runs_root=tmp_path)


def test_folder_of_another_run_and_cache_mismatch(toy, tmp_path):
    out = tmp_path / "run"
    T.train(T.TrainConfig(head="patch", depth=0, epochs=1), toy, out, progress=False, keep_checkpoints=True)
    assert (out / T.RESUME_FILE).exists()
    with pytest.raises(TrainError, match=r"holds another run \(config keys \['epochs'\] differ\)"):
        T.train(T.TrainConfig(head="patch", depth=0, epochs=2), toy, out, progress=False)
    with pytest.raises(TrainError, match="no run to resume"):
        T.train(T.TrainConfig(), toy, tmp_path / "fresh", resume=True)
    other = str(tmp_path / "other.zarr")
    D.toy_cache(other, n_clips=200, num_views=2, signal=1.0)  # same layout, other provenance
    with pytest.raises(CacheMismatch, match="backbone.signal"):
        T.evaluate(out, "test", cache=other)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(toy, copy)
    assert T.evaluate(out, "val", cache=str(copy))["clips"] == 40  # same fingerprint elsewhere: fine
    # the same cache at another path: still the same run, resumes (here: already complete)
    T.train(T.TrainConfig(head="patch", depth=0, epochs=1), str(copy), out, resume=True)


def test_streaming_training_equals_in_ram(toy, tmp_path):
    cfg = T.TrainConfig(head="ste", depth=1, epochs=2, batch_size=16, lr=0.05)
    a = T.train(cfg, toy, tmp_path / "ram", progress=False)
    b = T.train(cfg.replace(ram_limit="1K"), toy, tmp_path / "stream", progress=False)
    # same rows per epoch in a different (shard-aware) order: same quality, not the same bits
    assert abs(a["val"]["acc1"] - b["val"]["acc1"]) <= 0.15
    assert b["val"]["acc1"] >= 0.7


RUN_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from stecache import train as T
cfg = T.TrainConfig(head="stemean", depth=1, epochs=int(sys.argv[3]), batch_size=16, lr=0.05)  # has dropout
T.train(cfg, sys.argv[1], sys.argv[2], progress=False)
"""


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, *map(str, args)], env=env, **kw)


@pytest.mark.slow  # three training processes: ~15 s idle, 30 s on a loaded machine
def test_resume_after_sigkill_is_identical(toy, tmp_path):
    epochs = 8
    assert _run([toy, tmp_path / "full", epochs]).wait() == 0
    victim = _run([toy, tmp_path / "killed", epochs])
    ckpt = tmp_path / "killed" / T.RESUME_FILE
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if ckpt.exists() and len(_log(tmp_path / "killed")) >= 3:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "training finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    assert _run([toy, tmp_path / "killed", epochs]).wait() == 0  # resumes automatically
    full = (tmp_path / "full" / "metrics.json").read_text()
    assert (tmp_path / "killed" / "metrics.json").read_text() == full
    a, b = (
        load_file(str(tmp_path / "full" / "last.safetensors")),
        load_file(str(tmp_path / "killed" / "last.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["epoch"] for e in _log(tmp_path / "killed")] == list(range(1, epochs + 1))
    losses = [(e["loss"], e["val"]) for e in _log(tmp_path / "full")]
    assert [(e["loss"], e["val"]) for e in _log(tmp_path / "killed")] == losses


def test_cli_train_and_evaluate(toy, tmp_path, monkeypatch):
    from stecache.cli import cli
    from stecache.cli.train import HEAD_NAMES
    from stecache.heads import HEADS

    assert HEAD_NAMES == tuple(sorted(HEADS))
    runner = CliRunner()
    args = ["train-head", "--head", "patch", "--cache", toy, "--epochs", "2", "--lr", "0.05",
            "--batch-size", "16", "--runs", str(tmp_path), "--name", "cli"]  # fmt: skip
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "acc1" in r.output and "run folder" in r.output
    r = runner.invoke(cli, ["evaluate", str(tmp_path / "cli"), "--split", "val", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "split val (40 clips)" in r.output and "mean_class_acc" in r.output
    r = runner.invoke(
        cli, ["train-head", "--head", "tr", "--depth", "0", "--cache", toy, "--runs", str(tmp_path)]
    )
    assert r.exit_code == 1 and r.output.count("\n") == 2 and "depth" in r.output
    assert r.output.startswith(f"cache: {toy}\n")  # train-head says which cache it uses (stderr)
    import stecache.extract

    monkeypatch.setattr(stecache.extract, "last_cache", lambda: toy)  # no --cache: says which it picked
    args = ["train-head", "--head", "meanfc", "--epochs", "1", "--runs", str(tmp_path), "--device", "cpu"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"no --cache: using {toy} (the cache `stecache extract` made last)" in r.output
    r = runner.invoke(cli, ["train-head", "--head", "bogus"])
    assert r.exit_code == 2 and "bogus" in r.output


def test_epoch_line_prints_val_metric_in_percent_like_the_summary(toy, tmp_path, caplog):
    cfg = T.TrainConfig(head="meanfc", depth=0, epochs=1, batch_size=16, lr=0.05)
    with caplog.at_level("INFO", logger="stecache"):
        T.train(cfg, toy, tmp_path / "r", progress=False)
    acc1 = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])["val"]["acc1"]
    assert "epoch 1: loss" in caplog.text and f"val acc1 {100 * acc1:.2f}" in caplog.text


def test_evaluate_after_the_cache_moved_names_the_flag(toy, tmp_path):
    moved = tmp_path / "old.zarr"
    shutil.copytree(toy, moved)
    T.train(T.TrainConfig(head="meanfc", depth=0, epochs=1), str(moved), tmp_path / "r", progress=False)
    shutil.rmtree(moved)
    with pytest.raises(RunError, match=r"old\.zarr: the cache run .* is not there; moved\? pass --cache"):
        T.evaluate(tmp_path / "r", "val")  # was "no feature cache here ...; make one with `stecache extract`"
    assert T.evaluate(tmp_path / "r", "val", cache=toy)["clips"] == 40  # the same cache elsewhere


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from stecache import train as T
cfg = T.TrainConfig(head="ste", depth=1, epochs=3, batch_size=16, lr=0.05, balanced=False)
T.train(cfg, sys.argv[1], sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one(toy, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), toy, tmp_path / "one"], check=True, env=env)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    subprocess.run([*torchrun, str(script), toy, tmp_path / "two"], check=True, env=env, timeout=300)
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    w1, w2 = (
        load_file(str(tmp_path / "one" / "last.safetensors")),
        load_file(str(tmp_path / "two" / "last.safetensors")),
    )
    for k in w1:  # same global batches, gradients averaged: equal up to float summation order
        torch.testing.assert_close(w1[k], w2[k], atol=1e-4, rtol=1e-3)
    l1, l2 = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [e["loss"] for e in l1] == pytest.approx([e["loss"] for e in l2], rel=1e-4)
    assert one["val"]["acc1"] == pytest.approx(two["val"]["acc1"], abs=0.026)  # at most one clip of 40


@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"lr": "abc"}, {"weight_decay": -5.0}, {"epochs": 2.5}])
def test_bad_train_settings_are_refused_before_loading(bad):
    with pytest.raises(TrainError):
        T.TrainConfig(head="meanfc", **bad)


def test_rerunning_a_finished_run_records_it_once(toy, tmp_path):
    cfg = T.TrainConfig(head="meanfc", **FAST)
    first = T.train(cfg, toy, runs_root=tmp_path, progress=False)
    again = T.train(cfg, toy, runs_root=tmp_path, progress=False)
    assert again["test"] == first["test"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1


def test_rerunning_a_finished_run_does_not_train_again(toy, tmp_path, monkeypatch):
    """Its resume state is dropped when it finishes; the same command reports its metrics, no retraining."""
    out = tmp_path / "run"
    m = T.train(T.TrainConfig(head="meanfc", epochs=2), toy, out, progress=False)
    log_before = (out / "log.jsonl").read_text()
    monkeypatch.setattr(T.loop, "make_optimizer", lambda *a: pytest.fail("a finished run was trained again"))
    again = T.train(T.TrainConfig(head="meanfc", epochs=2), toy, out, progress=False)
    assert again["test"] == m["test"] and (out / "log.jsonl").read_text() == log_before
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
