"""Every command and flag with nonsense values and damaged files: never a traceback, exit 1 (a click usage
error may stay 2), one error line under 300 characters, and nothing written before the check.

The table is the test: each case is (id, argv template, expected exit code, optional setup). `{run}`,
`{cache}`, `{tmp}`... are filled from a small real world (tiny-backbone cache + a trained meanFC run) that
each case may copy and damage first. Add a row when a new flag or file appears.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from stecache.cli import cli
from stecache.synth import write_mp4

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _frames(rgb, t: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.full((t, 32, 40, 3), rgb, np.float32) + 12 * rng.standard_normal((t, 32, 40, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """{root, cache, run, list}: 12 colour clips -> videomaev2-tiny cache -> 1-epoch meanFC run."""
    from stecache.annotations import Dataset
    from stecache.extract import ExtractConfig, extract
    from stecache.train import TrainConfig, train
    from stecache.video import Clip

    root = tmp_path_factory.mktemp("nonsense")
    (root / "data/videos").mkdir(parents=True)
    clips, lines = [], []
    for k, rgb in enumerate(COLOURS):
        for j, split in enumerate(["train", "train", "val", "test"]):
            rel = f"videos/c{k}_{j}.mp4"
            write_mp4(root / "data" / rel, _frames(rgb, 20, 10 * k + j), fps=16)
            clips.append(Clip(rel, (k,), split, rel))
            lines.append(f"{rel} {k}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    ds = Dataset(root=root / "data", classes=("red", "green", "blue"), clips=tuple(clips), multi_label=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(ds, root / "cache.zarr", "videomaev2-tiny", cfg=ExtractConfig(workers=0, progress=False))
    tc = TrainConfig(head="meanfc", epochs=1, batch_size=4, warmup_epochs=0, balanced=False)
    train(tc, root / "cache.zarr", out_dir=root / "run", progress=False)
    return root


# ---- setups: copy a piece of the world into the case's folder and damage it ---------------------------


def _copy_run(w: Path, t: Path) -> Path:
    shutil.copytree(w / "run", t / "run")
    return t / "run"


def run_bad_weights(w, t):
    (_copy_run(w, t) / "best.safetensors").write_bytes(b"\x00garbage" * 10)


def run_truncated_weights(w, t):
    f = _copy_run(w, t) / "best.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def run_bad_config_json(w, t):
    (_copy_run(w, t) / "config.json").write_text("{not json")


def run_unknown_key(w, t):
    f = _copy_run(w, t) / "config.json"
    rec = json.loads(f.read_text())
    rec["config"]["flux_capacitor"] = 1
    f.write_text(json.dumps(rec))


def run_bad_value(w, t):
    f = _copy_run(w, t) / "config.json"
    rec = json.loads(f.read_text())
    rec["config"]["depth"] = "deep"
    f.write_text(json.dumps(rec))


def run_config_list(w, t):
    (_copy_run(w, t) / "config.json").write_text("[1, 2]")


def run_bad_metrics(w, t):
    (_copy_run(w, t) / "metrics.json").write_text("{torn")


def run_no_weights(w, t):
    (_copy_run(w, t) / "best.safetensors").unlink()


def cache_copy(w, t):
    shutil.copytree(w / "cache.zarr", t / "cache.zarr")


def cache_bad_zarr_json(w, t):
    cache_copy(w, t)
    (t / "cache.zarr/zarr.json").write_text("{]")


def cache_garbage_shard(w, t):
    cache_copy(w, t)
    f = t / "cache.zarr/features/c/0/0/0/0/0"
    f.write_bytes(b"\x01" * f.stat().st_size)


def cache_truncated_shard(w, t):
    cache_copy(w, t)
    f = t / "cache.zarr/features/c/0/0/0/0/0"
    f.write_bytes(f.read_bytes()[:50])


def cache_incomplete(w, t):
    from stecache.cache import open_cache

    cache_copy(w, t)
    open_cache(t / "cache.zarr", "r+").mark_not_done(np.array([0]))


def cache_bad_done(w, t):
    cache_copy(w, t)
    (t / "cache.zarr/done/c/0").write_bytes(b"garbage")


def text_file(w, t):
    (t / "notes.txt").write_text("hello, I am not a video\n")
    (t / "empty.mp4").write_bytes(b"")


def h5(name: str, **datasets):
    def setup(w, t):
        with h5py.File(t / name, "w") as f:
            for k, v in datasets.items():
                f[k] = v

    return setup


def annotation(text: str):
    def setup(w, t):
        (t / "ann.txt").write_text(text)

    return setup


def results(text: str):
    def setup(w, t):
        (t / "results.jsonl").write_text(text)

    return setup


def classes_file(text: str):
    def setup(w, t):
        (t / "cls.txt").write_text(text)

    return setup


def a_file(w, t):
    (t / "afile").write_text("x")


FEATS = np.zeros((4, 2, 3, 1, 1), np.float32)
BIG = str(2**70)
TRAIN = ["train-head", "--cache", "{cache}", "--head", "meanfc", "--epochs", "1", "--runs", "{tmp}/runs"]
ANN = ["extract", "--backbone", "videomaev2-tiny", "--annotations", "train={tmp}/ann.txt",
       "--data-root", "{tmp}"]  # fmt: skip
EXTRACT = ["extract", "--backbone", "videomaev2-tiny", "--annotations", "train={world}/train.txt",
           "--data-root", "{world}/data", "--workers", "0"]  # fmt: skip

# (id, argv, exit code, setup)
CASES = [
    # synth
    ("synth-seed-negative", ["synth", "{tmp}/s", "--seed", "-1", "--clips", "2"], 2, None),
    ("synth-seed-huge", ["synth", "{tmp}/s", "--seed", BIG, "--clips", "2"], 2, None),
    ("synth-clips-0", ["synth", "{tmp}/s", "--clips", "0"], 2, None),
    ("synth-out-devnull", ["synth", "/dev/null", "--clips", "2"], 1, None),
    ("synth-out-file", ["synth", "{tmp}/afile", "--clips", "2"], 1, a_file),
    ("synth-out-proc", ["synth", "/proc/stecache-synth", "--clips", "2"], 1, None),
    # heads
    ("heads-shape", ["heads", "--describe", "--shape", "8,x,7,7"], 2, None),
    ("heads-shape-huge", ["heads", "--describe", "--shape", f"8,{BIG},7,7"], 2, None),
    ("heads-classes-0", ["heads", "--describe", "--classes", "0"], 2, None),
    # extract
    ("extract-backbone", ["extract", "--backbone", "resnet"], 2, None),
    ("extract-device", [*EXTRACT, "--cache", "{tmp}/c.zarr", "--device", "bogus"], 2, None),
    ("extract-device-cuda9", [*EXTRACT, "--cache", "{tmp}/c.zarr", "--device", "cuda:9"], 2, None),
    ("extract-memory-url", [*EXTRACT, "--cache", "memory://new.zarr"], 1, None),
    ("extract-s3-url", [*EXTRACT, "--cache", "s3://bucket/new.zarr"], 1, None),
    ("extract-zip-url", [*EXTRACT, "--cache", "zip://new.zarr"], 1, None),
    ("extract-http-url", [*EXTRACT, "--cache", "https://example.com/new.zarr"], 1, None),
    ("extract-bogus-url", [*EXTRACT, "--cache", "bogus://x.zarr"], 1, None),
    ("extract-cache-readonly", [*EXTRACT, "--cache", "/proc/new.zarr"], 1, None),
    ("extract-cache-devnull", [*EXTRACT, "--cache", "/dev/null"], 1, None),
    ("extract-cache-file", [*EXTRACT, "--cache", "{tmp}/afile"], 1, a_file),
    ("extract-cache-damaged", [*EXTRACT, "--cache", "{tmp}/cache.zarr"], 1, cache_bad_zarr_json),
    ("extract-seed-negative", [*EXTRACT, "--cache", "{tmp}/c.zarr", "--seed", "-1"], 2, None),
    ("extract-seed-huge", [*EXTRACT, "--cache", "{tmp}/c.zarr", "--seed", BIG], 2, None),
    ("extract-batch-0", [*EXTRACT, "--batch-size", "0"], 2, None),
    ("extract-workers-neg", [*EXTRACT, "--workers", "-1"], 2, None),
    ("extract-shard-0", [*EXTRACT, "--shard-size", "0"], 2, None),
    ("extract-log-every-0", [*EXTRACT, "--log-every", "0"], 2, None),
    (
        "extract-checkpoint-garbage",
        [*EXTRACT, "--cache", "{tmp}/c.zarr", "--checkpoint", "{tmp}/notes.txt"],
        1,
        text_file,
    ),
    (
        "extract-annotations-missing",
        [
            "extract",
            "--backbone",
            "videomaev2-tiny",
            "--annotations",
            "train={tmp}/nope.txt",
            "--data-root",
            "{tmp}",
        ],
        2,
        None,
    ),
    (
        "extract-annotations-garbage",
        [*ANN, "--cache", "{tmp}/c.zarr"],
        1,
        annotation("\x00\x01 \x02\nfoo bar baz\n"),
    ),
    (
        "extract-annotations-2M-labels",
        [*ANN, "--cache", "{tmp}/c.zarr"],
        1,
        annotation("a.mp4 " + " ".join(["x"] * 2_000_000) + "\n"),
    ),
    (
        "extract-annotations-2M-numbers",
        [*ANN, "--cache", "{tmp}/c.zarr"],
        1,
        annotation("a.mp4 " + " ".join(["7"] * 2_000_000) + "\n"),
    ),
    (
        "extract-annotations-dup-ids",
        [*EXTRACT[:4], "train={tmp}/ann.txt", *EXTRACT[5:], "--cache", "{tmp}/c.zarr"],
        1,
        annotation("videos/c0_0.mp4 0\nvideos/c0_0.mp4 1\n"),
    ),
    (
        "extract-classes-empty",
        [*EXTRACT, "--cache", "{tmp}/c.zarr", "--classes", "{tmp}/cls.txt"],
        1,
        classes_file(""),
    ),
    (
        "extract-data-not-dataset",
        ["extract", "--backbone", "videomaev2-tiny", "--data", "{tmp}", "--cache", "{tmp}/c.zarr"],
        1,
        None,
    ),
    # info / verify / export-h5
    ("info-missing", ["info", "{tmp}/nope.zarr"], 1, None),
    ("info-file", ["info", "{tmp}/afile"], 1, a_file),
    ("info-devnull", ["info", "/dev/null"], 1, None),
    ("info-bad-zarr-json", ["info", "{tmp}/cache.zarr"], 1, cache_bad_zarr_json),
    ("info-bad-done", ["info", "{tmp}/cache.zarr"], 1, cache_bad_done),
    ("info-s3", ["info", "s3://bucket/x.zarr"], 1, None),
    ("verify-missing", ["verify", "{tmp}/nope.zarr"], 1, None),
    ("verify-garbage-shard", ["verify", "{tmp}/cache.zarr"], 1, cache_garbage_shard),
    ("verify-truncated-shard", ["verify", "{tmp}/cache.zarr"], 1, cache_truncated_shard),
    ("verify-bad-zarr-json", ["verify", "{tmp}/cache.zarr"], 1, cache_bad_zarr_json),
    ("export-h5-incomplete", ["export-h5", "{tmp}/cache.zarr", "{tmp}/o.h5"], 1, cache_incomplete),
    ("export-h5-devnull", ["export-h5", "{cache}", "/dev/null"], 1, None),
    ("export-h5-no-dir", ["export-h5", "{cache}", "{tmp}/no/such/dir/o.h5"], 1, None),
    ("export-h5-damaged", ["export-h5", "{tmp}/cache.zarr", "{tmp}/o.h5"], 1, cache_garbage_shard),
    # import-h5
    ("import-h5-not-h5", ["import-h5", "{tmp}/notes.txt", "{tmp}/c.zarr"], 1, text_file),
    (
        "import-h5-label-1e9",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 10**9, 2])),
    ),
    (
        "import-h5-label-negative",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, -1, 1, 2])),
    ),
    (
        "import-h5-label-float",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0.5, np.nan, 1, 2])),
    ),
    (
        "import-h5-label-length",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1])),
    ),
    (
        "import-h5-labels-3d",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.zeros((4, 2, 2))),
    ),
    (
        "import-h5-multihot-huge",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.full((4, 3), 7)),
    ),
    (
        "import-h5-features-3d",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=np.zeros((4, 2, 3)), labels=np.array([0, 1, 0, 1])),
    ),
    (
        "import-h5-features-strings",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=np.array([b"a", b"b"]), labels=np.array([0, 1])),
    ),
    (
        "import-h5-features-complex",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=np.zeros((4, 3), np.complex64), labels=np.array([0, 1, 0, 1])),
    ),
    (
        "import-h5-views-shape",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 0, 1]), views=np.zeros((4, 1, 9))),
    ),
    (
        "import-h5-done-length",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 0, 1]), done=np.ones(3, bool)),
    ),
    (
        "import-h5-missing-dataset",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr", "--features", "x"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 0, 1])),
    ),
    (
        "import-h5-dup-ids",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 0, 1]), clip_id=np.array([b"a"] * 4)),
    ),
    (
        "import-h5-split-length",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 0, 1]), split=np.array([b"train"])),
    ),
    (
        "import-h5-classes-short",
        ["import-h5", "{tmp}/f.h5", "{tmp}/c.zarr", "--classes", "{tmp}/cls.txt"],
        1,
        lambda w, t: (
            h5("f.h5", features=FEATS, labels=np.array([0, 1, 2, 1]))(w, t),
            classes_file("a\n")(w, t),
        ),
    ),
    (
        "import-h5-memory-url",
        ["import-h5", "{tmp}/f.h5", "memory://x.zarr"],
        1,
        h5("f.h5", features=FEATS, labels=np.array([0, 1, 0, 1])),
    ),
    # train-head
    ("train-cache-missing", [*TRAIN[:2], "{tmp}/nope.zarr", *TRAIN[3:]], 1, None),
    ("train-cache-file", [*TRAIN[:2], "{tmp}/afile", *TRAIN[3:]], 1, a_file),
    ("train-cache-s3", [*TRAIN[:2], "s3://b/x.zarr", *TRAIN[3:]], 1, None),
    ("train-cache-damaged", [*TRAIN[:2], "{tmp}/cache.zarr", *TRAIN[3:]], 1, cache_garbage_shard),
    ("train-cache-truncated", [*TRAIN[:2], "{tmp}/cache.zarr", *TRAIN[3:]], 1, cache_truncated_shard),
    ("train-cache-incomplete", [*TRAIN[:2], "{tmp}/cache.zarr", *TRAIN[3:]], 1, cache_incomplete),
    ("train-seed-negative", [*TRAIN, "--seed", "-1"], 2, None),
    ("train-seed-huge", [*TRAIN, "--seed", BIG], 2, None),
    ("train-data-seed-negative", [*TRAIN, "--data-seed", "-5"], 2, None),
    ("train-depth-negative", [*TRAIN, "--depth", "-1"], 1, None),
    ("train-depth-huge", [*TRAIN[:4], "ste", *TRAIN[5:], "--depth", "999"], 1, None),
    ("train-option-unknown", [*TRAIN, "--option", "flux=1"], 1, None),
    ("train-option-bad-patch", [*TRAIN[:4], "patch", *TRAIN[5:], "--option", "patch=[0,0,0]"], 1, None),
    ("train-option-not-kv", [*TRAIN, "--option", "flux"], 2, None),
    ("train-ram-limit", [*TRAIN, "--ram-limit", "lots"], 1, None),
    ("train-ram-limit-negative", [*TRAIN, "--ram-limit", "-4G"], 1, None),
    ("train-batch-0", [*TRAIN, "--batch-size", "0"], 2, None),
    ("train-epochs-huge", [*TRAIN[:6], BIG, *TRAIN[7:]], 2, None),
    ("train-lr-text", [*TRAIN, "--lr", "fast"], 2, None),
    ("train-out-devnull", [*TRAIN, "--out", "/dev/null"], 1, None),
    ("train-out-file", [*TRAIN, "--out", "{tmp}/afile"], 1, a_file),
    ("train-out-proc", [*TRAIN, "--out", "/proc/stecache-run"], 1, None),
    ("train-runs-devnull", [*TRAIN[:-1], "/dev/null"], 1, None),
    # evaluate
    ("evaluate-not-a-run", ["evaluate", "{tmp}"], 1, None),
    ("evaluate-bad-weights", ["evaluate", "{tmp}/run"], 1, run_bad_weights),
    ("evaluate-truncated-weights", ["evaluate", "{tmp}/run"], 1, run_truncated_weights),
    ("evaluate-no-weights", ["evaluate", "{tmp}/run"], 1, run_no_weights),
    ("evaluate-bad-config", ["evaluate", "{tmp}/run"], 1, run_bad_config_json),
    ("evaluate-config-list", ["evaluate", "{tmp}/run"], 1, run_config_list),
    ("evaluate-unknown-key", ["evaluate", "{tmp}/run"], 1, run_unknown_key),
    ("evaluate-bad-value", ["evaluate", "{tmp}/run"], 1, run_bad_value),
    ("evaluate-split-bogus", ["evaluate", "{run}", "--split", "bogus"], 1, None),
    ("evaluate-cache-missing", ["evaluate", "{run}", "--cache", "{tmp}/nope.zarr"], 1, None),
    (
        "evaluate-cache-damaged",
        ["evaluate", "{run}", "--split", "val", "--cache", "{tmp}/cache.zarr"],
        1,
        cache_garbage_shard,
    ),
    ("evaluate-cache-s3", ["evaluate", "{run}", "--cache", "s3://b/x.zarr"], 1, None),
    # ablate
    (
        "ablate-seeds-negative",
        ["ablate", "{cache}", "--heads", "meanfc", "--seeds", "-1", "--out", "{tmp}/a"],
        2,
        None,
    ),
    (
        "ablate-seeds-huge",
        ["ablate", "{cache}", "--heads", "meanfc", "--seeds", BIG, "--out", "{tmp}/a"],
        2,
        None,
    ),
    ("ablate-seeds-text", ["ablate", "{cache}", "--heads", "meanfc", "--seeds", "a,b"], 2, None),
    (
        "ablate-set-head",
        ["ablate", "{cache}", "--heads", "meanfc", "--set", "head=tr", "--out", "{tmp}/a"],
        1,
        None,
    ),
    (
        "ablate-set-depth",
        ["ablate", "{cache}", "--heads", "meanfc", "--set", "depth=1", "--out", "{tmp}/a"],
        1,
        None,
    ),
    (
        "ablate-set-seed",
        ["ablate", "{cache}", "--heads", "meanfc", "--set", "seed=3", "--out", "{tmp}/a"],
        1,
        None,
    ),
    (
        "ablate-set-unknown",
        ["ablate", "{cache}", "--heads", "meanfc", "--set", "flux=1", "--out", "{tmp}/a"],
        1,
        None,
    ),
    (
        "ablate-set-bad-value",
        ["ablate", "{cache}", "--heads", "meanfc", "--set", "lr=abc", "--out", "{tmp}/a"],
        1,
        None,
    ),
    ("ablate-set-not-kv", ["ablate", "{cache}", "--heads", "meanfc", "--set", "lr"], 2, None),
    ("ablate-heads-bogus", ["ablate", "{cache}", "--heads", "bogus:1", "--out", "{tmp}/a"], 1, None),
    ("ablate-heads-depth-range", ["ablate", "{cache}", "--heads", "ste:9-1", "--out", "{tmp}/a"], 1, None),
    ("ablate-tables-bogus", ["ablate", "{cache}", "--tables", "IV", "--out", "{tmp}/a"], 1, None),
    (
        "ablate-memory-lots",
        ["ablate", "{cache}", "--heads", "meanfc", "--memory", "lots", "--out", "{tmp}/a", "--epochs", "1"],
        1,
        None,
    ),
    (
        "ablate-device-bogus",
        ["ablate", "{cache}", "--heads", "meanfc", "--device", "bogus", "--out", "{tmp}/a", "--epochs", "1"],
        2,
        None,
    ),
    ("ablate-cache-missing", ["ablate", "{tmp}/nope.zarr", "--heads", "meanfc", "--out", "{tmp}/a"], 1, None),
    (
        "ablate-cache-damaged",
        ["ablate", "{tmp}/cache.zarr", "--heads", "meanfc", "--out", "{tmp}/a", "--epochs", "1"],
        1,
        cache_garbage_shard,
    ),
    (
        "ablate-out-devnull",
        ["ablate", "{cache}", "--heads", "meanfc", "--out", "/dev/null", "--epochs", "1"],
        1,
        None,
    ),
    # report
    ("report-missing", ["report", "{tmp}/nope.jsonl"], 1, None),
    ("report-garbage", ["report", "{tmp}/results.jsonl", "--out", "{tmp}/r"], 1, results("\x00{{{\n")),
    ("report-not-objects", ["report", "{tmp}/results.jsonl", "--out", "{tmp}/r"], 1, results('[1]\n"x"\n')),
    ("report-empty", ["report", "{tmp}/results.jsonl", "--out", "{tmp}/r"], 1, results("")),
    (
        "report-wrong-keys",
        ["report", "{tmp}/results.jsonl", "--out", "{tmp}/r"],
        1,
        results('{"head": 1, "metrics": "x"}\n'),
    ),
    (
        "report-out-devnull",
        ["report", "{tmp}/results.jsonl", "--out", "/dev/null"],
        1,
        results('{"head": "meanfc"}\n'),
    ),
    ("report-correlation-missing", ["report", "--correlation", "{tmp}/nope"], 1, None),
    ("report-correlation-file", ["report", "--correlation", "{tmp}/afile"], 1, a_file),
    (
        "report-correlation-damaged",
        ["report", "--correlation", "{tmp}/cache.zarr", "--out", "{tmp}/r"],
        1,
        cache_garbage_shard,
    ),
    (
        "report-split-bogus",
        ["report", "--correlation", "{cache}", "--split", "bogus", "--out", "{tmp}/r"],
        1,
        None,
    ),
    # predict / export
    ("predict-text-file", ["predict", "{run}", "{tmp}/notes.txt"], 1, text_file),
    ("predict-empty-file", ["predict", "{run}", "{tmp}/empty.mp4"], 1, text_file),
    ("predict-missing", ["predict", "{run}", "{tmp}/nope.mp4"], 1, None),
    ("predict-devnull", ["predict", "{run}", "/dev/null"], 1, None),
    ("predict-device", ["predict", "{run}", "{tmp}/notes.txt", "--device", "bogus"], 2, text_file),
    ("predict-window-0", ["predict", "{run}", "{tmp}/notes.txt", "--window", "0"], 2, text_file),
    ("predict-stride-no-window", ["predict", "{run}", "{tmp}/notes.txt", "--stride", "1"], 2, text_file),
    ("predict-bad-weights", ["predict", "{tmp}/run", "{tmp}/notes.txt"], 1, run_bad_weights),
    (
        "predict-bad-metrics",
        ["predict", "{tmp}/run", "{tmp}/notes.txt"],
        1,
        lambda w, t: (run_bad_metrics(w, t), text_file(w, t)),
    ),
    ("predict-unknown-key", ["predict", "{tmp}/run", "{tmp}/notes.txt"], 1, run_unknown_key),
    (
        "predict-checkpoint-garbage",
        ["predict", "{run}", "{tmp}/notes.txt", "--checkpoint", "{tmp}/notes.txt"],
        1,
        text_file,
    ),
    ("export-bad-weights", ["export", "{tmp}/run", "--out", "{tmp}/m.pt"], 1, run_bad_weights),
    ("export-bad-config", ["export", "{tmp}/run", "--out", "{tmp}/m.pt"], 1, run_bad_config_json),
    ("export-out-devnull", ["export", "{run}", "--out", "/dev/null", "--head-only"], 1, None),
    ("export-out-no-dir", ["export", "{run}", "--out", "/proc/x/m.pt", "--head-only"], 1, None),
    (
        "export-checkpoint-garbage",
        ["export", "{run}", "--checkpoint", "{tmp}/notes.txt", "--out", "{tmp}/m.pt"],
        1,
        text_file,
    ),
]


def _fill(arg: str, world: Path, tmp: Path) -> str:
    return arg.format(world=world, cache=world / "cache.zarr", run=world / "run", tmp=tmp)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_nonsense_is_one_line_no_traceback(world, tmp_path, monkeypatch, case):
    name, argv, code, setup = case
    monkeypatch.chdir(tmp_path)  # `work/last_cache` and other defaults land here
    if setup:
        setup(world, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(cli, [_fill(a, world, tmp_path) for a in argv])
    out = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (name, repr(res.exception), out)
    assert "Traceback" not in out, out
    assert res.exit_code == code, (name, out[-2000:])
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and len(errors[0]) < 300, (name, out[-2000:])
    if os.environ.get("STECACHE_NONSENSE_LOG"):  # review the wording: one line per case
        with open(os.environ["STECACHE_NONSENSE_LOG"], "a") as f:
            f.write(f"{name} [{res.exit_code}] {errors[0]}\n")
    if code == 1:  # nothing written before the check, except what the case itself leaves
        made = {p for p in tmp_path.rglob("*")} - before
        made = {p for p in made if p.name != "verify.json"}  # what `verify` found is its output
        assert not [p for p in made if p.is_file()], (name, sorted(made))
    assert not (tmp_path / "work" / "last_cache").exists(), "a failed extract is remembered"


def test_case_count():
    """The report quotes this number."""
    assert len(CASES) >= 100
