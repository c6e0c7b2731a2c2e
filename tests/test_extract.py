"""Tests of stage one: features equal an independent per-clip reference, resume after SIGKILL, failures,
refusals, views, and torchrun scale-out (slow)."""

from __future__ import annotations

import dataclasses
import multiprocessing
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
from conftest import FakeBackbone

from stecache.annotations import load_dataset_dir
from stecache.cache import lock, open_cache
from stecache.errors import CacheBusy, CacheMismatch, ExtractionFailed, StecacheError
from stecache.extract import (
    ExtractConfig,
    augment,
    dataset_from_annotations,
    extract,
    load_views,
)
from stecache.video import load_clip

CFG = ExtractConfig(shard_size=4, batch_size=3, workers=0, progress=False)
BIN = Path(sys.executable).parent


def _reference(ds, backbone, sampling=None, preprocess=None) -> np.ndarray:
    """Features [N, V, n, c, h, w] computed clip by clip, without the extractor."""
    out = []
    with torch.inference_mode():
        for clip in ds.clips:
            x = load_clip(
                ds.root / clip.path, sampling or backbone.sampling, preprocess or backbone.preprocess
            )
            out.append(backbone(x).numpy())
    return np.stack(out).astype(np.float16)


@pytest.fixture(scope="module")
def ds(synth_dir):
    return load_dataset_dir(synth_dir)


@pytest.fixture(scope="module")
def small(ds):
    """The first 12 clips: enough for multi-view tests, which decode every clip several times."""
    return dataclasses.replace(ds, clips=ds.clips[:12])


@pytest.fixture(scope="module")
def reference(ds):
    return _reference(ds, FakeBackbone())


def test_features_labels_provenance_equal_reference(ds, reference, tmp_path):
    s = extract(ds, tmp_path / "c.zarr", FakeBackbone(), cfg=CFG.replace(workers=2))
    assert s["extracted"] == len(ds.clips) == s["done"] and s["failed"] == [] and s["already_done"] == 0
    c = open_cache(tmp_path / "c.zarr")
    np.testing.assert_array_equal(c.read(np.arange(len(c))), reference[:, 0])
    assert c.feature_shape == (4, 16, 4, 4) and c.num_views == 1 and c.done.all()
    assert c.clip_id.tolist() == [x.clip_id for x in ds.clips] and c.split.tolist() == [
        x.split for x in ds.clips
    ]
    np.testing.assert_array_equal(c.label_index(), [x.labels[0] for x in ds.clips])
    assert c.class_names == ds.classes and c.attrs["backbone"] == FakeBackbone().provenance()
    assert c.attrs["sampling"] == FakeBackbone().sampling.to_dict() and c.attrs["views"]["count"] == 1
    again = extract(ds, tmp_path / "c.zarr", FakeBackbone(), cfg=CFG)  # re-run: nothing to do
    assert again["extracted"] == 0 and again["already_done"] == len(ds.clips)


def test_other_settings_refused_with_diff(ds, tmp_path):
    extract(ds, tmp_path / "c.zarr", FakeBackbone(), cfg=CFG)
    with pytest.raises(CacheMismatch, match=r"backbone\.channels: cache=16 now=8"):
        extract(ds, tmp_path / "c.zarr", FakeBackbone(channels=8), cfg=CFG)
    with pytest.raises(CacheMismatch, match=r"views\.test: cache=\[1, 1\] now=\[2, 3\]"):
        extract(ds, tmp_path / "c.zarr", FakeBackbone(), cfg=CFG.replace(test_views=True))


def test_test_views_equal_reference(small, tmp_path):
    fake = FakeBackbone()
    sampling, preprocess = fake.sampling.replace(num_clips=2), fake.preprocess.replace(crop="three")
    ref = _reference(small, fake, sampling, preprocess)  # [N, 6, ...] crop-major
    extract(small, tmp_path / "c.zarr", fake, cfg=CFG.replace(test_views=True))
    c = open_cache(tmp_path / "c.zarr")
    assert c.num_views == 6 and c.attrs["views"]["test"] == [2, 3]
    np.testing.assert_array_equal(c.read_views(np.arange(len(c))), ref)


def test_train_views_are_augmented_and_deterministic(small, reference, tmp_path):
    cfg = CFG.replace(train_views=2, seed=5)
    extract(small, tmp_path / "a.zarr", FakeBackbone(), cfg=cfg)
    extract(small, tmp_path / "b.zarr", FakeBackbone(), cfg=cfg.replace(workers=2, batch_size=5))
    a, b = open_cache(tmp_path / "a.zarr"), open_cache(tmp_path / "b.zarr")
    va, vb = a.read_views(np.arange(len(a))), b.read_views(np.arange(len(b)))
    np.testing.assert_array_equal(va, vb)  # same seed: same views whatever the batching/workers
    np.testing.assert_array_equal(va[:, 0], reference[:12, 0])  # view 0 is the plain test view
    assert a.num_views == 3 and a.attrs["views"]["train_seed"] == 5
    assert not np.array_equal(va[:, 1], va[:, 0]) and not np.array_equal(va[:, 1], va[:, 2])


def test_augment_crops_resizes_and_flips():
    x = torch.arange(3 * 2 * 8 * 8, dtype=torch.float32).reshape(1, 3, 2, 8, 8)
    seen_flip = seen_crop = False
    for seed in range(20):
        y = augment(x, 4, np.random.default_rng(seed))
        assert y.shape == (1, 3, 2, 4, 4)
        assert torch.equal(y, augment(x, 4, np.random.default_rng(seed)))
        rows = y[0, 0, 0, :, 1:] - y[0, 0, 0, :, :-1]  # x increases along width: sign shows a flip
        seen_flip |= bool((rows < 0).all())
        seen_crop |= float(y[0, 0, 0].max() - y[0, 0, 0].min()) < 63 * 0.9  # a frame spans 0..63
    assert seen_flip and seen_crop


def test_train_view_matches_manual_recipe(ds):
    fake = FakeBackbone()
    views = __import__("stecache.extract", fromlist=["plan_views"]).plan_views(
        fake, CFG.replace(train_views=1)
    )
    path = ds.root / ds.clips[3].path
    got = load_views(path, views, row=3)  # [2, 3, T, S, S]
    rng = np.random.default_rng([0, 3, 0])
    square = fake.preprocess.replace(crop_size=fake.preprocess.short_side)
    manual = augment(load_clip(path, fake.sampling.replace(test_mode=False), square, rng), 32, rng)
    torch.testing.assert_close(got[1:], manual, rtol=0, atol=0)
    torch.testing.assert_close(got[:1], load_clip(path, fake.sampling, fake.preprocess), rtol=0, atol=0)


def test_corrupt_clips_recorded_rest_extracted_then_retried(ds, reference, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ds.root, data)
    bad = {1: b"", 6: b"this is not an mp4 file" * 10}
    for i, content in bad.items():
        (data / ds.clips[i].path).write_bytes(content)
    (data / ds.clips[9].path).unlink()
    broken = load_dataset_dir(data)
    url = tmp_path / "c.zarr"
    with pytest.raises(ExtractionFailed, match=r"3 of 48 clips failed.*--allow-failures") as e:
        extract(broken, url, FakeBackbone(), cfg=CFG)
    assert ds.clips[1].clip_id in str(e.value) and ds.clips[9].clip_id in str(e.value)
    c = open_cache(url)
    failed = [1, 6, 9]
    assert np.flatnonzero(~c.done).tolist() == failed
    assert all(c.error[i] for i in failed) and "MissingVideo" in c.error[9]
    ok = np.flatnonzero(c.done)
    np.testing.assert_array_equal(c.read(ok), reference[ok, 0])
    s = extract(broken, url, FakeBackbone(), cfg=CFG.replace(allow_failures=True))  # retried, fail again
    assert s["extracted"] == 0 and len(s["failed"]) == 3 and s["done"] == 45
    for i in failed:  # fix the files: the re-run extracts only those, the others stay byte-identical
        shutil.copy(ds.root / ds.clips[i].path, data / ds.clips[i].path)
    s = extract(broken, url, FakeBackbone(), cfg=CFG)
    assert s["extracted"] == 3 and s["already_done"] == 45 and s["failed"] == []
    c = open_cache(url)
    np.testing.assert_array_equal(c.read(np.arange(48)), reference[:, 0])
    assert c.done.all() and (c.error == "").all()


def _hold(url, started, release):
    with lock(url):
        started.set()
        release.wait(30)


def test_second_extract_refused_while_one_runs(ds, tmp_path):
    url = tmp_path / "c.zarr"
    ctx = multiprocessing.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(url, started, release))
    p.start()
    try:
        assert started.wait(60)
        with pytest.raises(CacheBusy, match=rf"busy, pid {p.pid}"):
            extract(ds, url, FakeBackbone(), cfg=CFG)
    finally:
        release.set()
        p.join()
    assert extract(ds, url, FakeBackbone(), cfg=CFG)["done"] == 48


def test_interrupted_run_resumes_identically(ds, reference, tmp_path):
    class Crash(FakeBackbone):
        calls = 0

        def forward(self, x):
            Crash.calls += 1
            if Crash.calls == 6:  # mid-shard, after some shards were written
                raise KeyboardInterrupt
            return super().forward(x)

    url = tmp_path / "c.zarr"
    with pytest.raises(KeyboardInterrupt):
        extract(ds, url, Crash(), cfg=CFG)
    done = open_cache(url).done
    # forwards of 3 views span shards of 4: five forwards (15 clips) ran before Ctrl-C, three whole shards
    assert done.sum() == 15  # are stored and so are the 3 clips of the fourth computed before it
    s = extract(ds, url, FakeBackbone(), cfg=CFG)
    assert s["already_done"] == done.sum() and s["extracted"] == 48 - done.sum()
    np.testing.assert_array_equal(open_cache(url).read(np.arange(48)), reference[:, 0])


def _done_count(url) -> int:
    try:
        return int(open_cache(url).done.sum())
    except StecacheError:  # not created yet, or created without attributes yet
        return 0


def _cli(*args: str) -> list[str]:
    return [str(BIN / "stecache"), "extract", "--backbone", "videomaev2-tiny", *args]


@pytest.mark.slow
def test_sigkill_mid_extract_then_resume_equals_uninterrupted(ds, tmp_path):
    args = ["--data", str(ds.root), "--shard-size", "4", "--batch-size", "2", "--workers", "1"]
    ref_url, url = tmp_path / "ref.zarr", tmp_path / "c.zarr"
    proc = subprocess.Popen(_cli(*args, "--cache", str(url)), cwd=tmp_path, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if _done_count(url) >= 4:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = _done_count(url)
            break
        time.sleep(0.02)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "extract ended before the kill"
    done = open_cache(url).done
    assert 4 <= done.sum() < 48 and done.sum() % 4 == 0
    subprocess.run(_cli(*args, "--cache", str(ref_url)), cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(_cli(*args, "--cache", str(url)), cwd=tmp_path, check=True, capture_output=True)
    assert f"({48 - done.sum()} extracted now, {done.sum()} before, 0 failed)" in out.stdout.decode()
    assert "decoding in 1 worker processes (--workers)" in out.stdout.decode()
    a, b = open_cache(ref_url), open_cache(url)
    np.testing.assert_array_equal(b.read(np.arange(48)), a.read(np.arange(48)))
    assert b.done.all() and b.fingerprint == a.fingerprint
    assert (tmp_path / "work" / "last_cache").read_text().strip() == str(url)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(ds, tmp_path):
    args = ["--data", str(ds.root), "--shard-size", "4", "--batch-size", "2", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*args, "--cache", "one.zarr"), cwd=tmp_path, env=env, check=True, capture_output=True)
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node=2", "--master_port=29517", str(BIN / "stecache")]
    out = subprocess.run([*torchrun, *_cli(*args, "--cache", "two.zarr")[1:]], cwd=tmp_path, env=env,
                         capture_output=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert "48 extracted now, 0 before, 0 failed) in" in out.stdout.decode()
    assert "per rank 24+24" in out.stdout.decode()  # 12 shards of 4: ranks took alternate shards
    a, b = open_cache(tmp_path / "one.zarr"), open_cache(tmp_path / "two.zarr")
    np.testing.assert_array_equal(b.read(np.arange(48)), a.read(np.arange(48)))
    assert b.done.all() and b.fingerprint == a.fingerprint


def test_dataset_from_annotations(ds, tmp_path):
    got = dataset_from_annotations(
        {"train": ds.root / "train.txt", "val": ds.root / "val.txt"}, ds.root, ds.root / "classes.txt"
    )
    assert got.classes == ds.classes and not got.multi_label
    assert [c for c in ds.clips if c.split in ("train", "val")] == list(got.clips)
    nameless = dataset_from_annotations({"train": ds.root / "train.txt"}, ds.root)
    assert nameless.classes == tuple(str(i) for i in range(1 + max(c.labels[0] for c in nameless.clips)))


def test_cli_backbone_names_and_usage_errors(tmp_path):
    from click.testing import CliRunner

    from stecache.backbones import BACKBONES
    from stecache.cli import cli
    from stecache.cli.extract import BACKBONE_NAMES

    assert BACKBONE_NAMES == tuple(sorted(BACKBONES))
    run = CliRunner().invoke
    out = run(cli, ["extract", "--backbone", "resnet"])
    assert out.exit_code == 2 and "image:<dir>" in out.output
    out = run(cli, ["extract", "--backbone", "videomaev2-tiny", "--annotations", "train"])
    assert out.exit_code == 2 and "SPLIT=FILE" in out.output
    (tmp_path / "t.txt").write_text("a.mp4 0\n")
    out = run(
        cli, ["extract", "--backbone", "videomaev2-tiny", "--annotations", f"train={tmp_path / 't.txt'}"]
    )
    assert out.exit_code == 2 and "--data-root" in out.output


# ---- the forward batch: chosen by timing, forced by --batch-size, output independent of it ---------------


class Timed(FakeBackbone):
    """A backbone whose per-view cost depends on the batch size (sleeps), recording every batch it sees."""

    def __init__(self, ms_per_view: dict[int, float]):
        super().__init__()
        self.ms, self.sizes = ms_per_view, []

    def forward(self, x):
        self.sizes.append(len(x))
        time.sleep(len(x) * self.ms.get(len(x), 1.0) / 1e3)
        return super().forward(x)


# ms per view at batch 1, 2, 3 (this shared CPU adds tens of ms of noise to any forward); 48 clips allow
# trial sizes up to 48 / 16 = 3
@pytest.mark.parametrize("ms,fast", [({1: 80.0, 2: 5.0, 3: 80.0}, 2), ({1: 80.0, 2: 40.0, 3: 5.0}, 3)])
def test_chooser_picks_the_faster_size_keeps_timed_clips(ds, reference, tmp_path, monkeypatch, ms, fast):
    import stecache.extract.batching

    monkeypatch.setitem(stecache.extract.batching.CANDIDATES, "cpu", (1, 2, 3))
    bb = Timed(ms)
    s = extract(ds, tmp_path / "c.zarr", bb, cfg=CFG.replace(batch_size=None))
    assert s["batch"]["batch_size"] == fast and s["batch"]["chosen"] == "measured", (s["batch"], bb.sizes[:9])
    assert set(s["batch"]["per_view_ms"]) >= {"1", "2"}
    c = open_cache(tmp_path / "c.zarr")
    assert c.attrs["extraction"]["batch_size"] == fast and c.attrs["extraction"]["device"] == "cpu"
    assert sum(bb.sizes) == len(ds.clips)  # the timed forwards' clips were kept, none recomputed
    first = next(i for i in range(len(bb.sizes)) if all(b == fast for b in bb.sizes[i:-1]))
    assert first <= 6 and bb.sizes[0] == 1  # warm-up, scan, confirm, then the chosen size to the end
    np.testing.assert_array_equal(c.read(np.arange(len(c))), reference[:, 0])
    assert open_cache(tmp_path / "c.zarr").fingerprint == c.fingerprint  # the note is not fingerprinted


def test_forced_batch_size_skips_the_chooser(ds, tmp_path, monkeypatch):
    import stecache.extract.batching

    monkeypatch.setitem(stecache.extract.batching.CANDIDATES, "cpu", (1, 2, 4))
    bb = Timed({5: 20.0})  # the forced size is the slowest: it is used anyway
    s = extract(ds, tmp_path / "c.zarr", bb, cfg=CFG.replace(batch_size=5))
    assert bb.sizes == [5] * 9 + [3] and s["batch"] == {
        "batch_size": 5, "chosen": "--batch-size", "device": "cpu", "per_view_ms": {}
    }  # fmt: skip


def test_chooser_unit():
    from stecache.extract.batching import BatchChooser

    ch = BatchChooser(torch.device("cpu"), candidates=(1, 2, 4, 8))
    per_view = {1: 1.0, 2: 0.9, 4: 1.2, 8: 0.1}  # 8 is never tried: 4 is > 5 % slower than 2 (twice)
    seen = []
    while ch.measuring:
        seen.append(ch.size)
        ch.record(ch.size, ch.size * per_view[ch.size])
    assert seen == [1, 1, 2, 4, 4, 1, 2] and ch.chosen == 2  # warm-up, scan, the best two timed twice
    ch = BatchChooser(torch.device("cpu"), candidates=(1, 2))
    ch.record(1, 5.0)  # warm-up: not timed
    ch.record(1, 1.0)
    ch.record(1, 0.1)  # a short batch (data ran out) is not a measurement of size 2
    assert ch.measuring and ch.size == 2 and ch.times == {1: [1.0]}
    assert BatchChooser(torch.device("cuda"), forced=3).size == 3
    few = BatchChooser(torch.device("cpu"), candidates=(1, 2, 4), total=40)  # 4 x 16 > 40: 4 is not tried
    assert few.candidates == (1, 2) and BatchChooser(torch.device("cpu"), total=10).chosen == 1
    assert BatchChooser(torch.device("cuda")).candidates[0] >= 4  # GPUs start from larger batches


@pytest.mark.parametrize("name", ["fake", "videomaev2-tiny"])
def test_output_identical_whatever_the_batch(small, tmp_path, name):
    """fp32 compute -> fp16 storage on CPU: bit-identical features for any batch, views split or not."""
    from stecache.backbones import load

    bb = FakeBackbone() if name == "fake" else load(name)
    cfg = CFG.replace(test_views=True)  # 6 views per clip for fake, batch 4 splits a clip's views
    data = dataclasses.replace(small, clips=small.clips[: 4 if name == "fake" else 2])
    out = []
    for i, b in enumerate((1, 4, 7, None)):
        s = extract(data, tmp_path / f"{i}.zarr", bb, cfg=cfg.replace(batch_size=b))
        c = open_cache(tmp_path / f"{i}.zarr")
        out.append(c.read_views(np.arange(len(c))))
        assert s["batch"]["batch_size"] == b or b is None
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])


# ---- where decoding runs: measured on CPU, forced by --workers ---------------------------------------


class SlowReader:
    """A reader whose decode takes `ms` (sleep) and returns its index; picklable for worker processes."""

    def __init__(self, n: int, ms: float):
        self.n, self.ms = n, ms

    def __len__(self):
        return self.n

    def __getitem__(self, j):
        time.sleep(self.ms / 1e3)
        return j, os.getpid()


@pytest.mark.parametrize("decode_ms,forward_ms,workers", [(30.0, 1.0, 2), (1.0, 30.0, 0)])
def test_decoding_placement_is_measured(monkeypatch, decode_ms, forward_ms, workers):
    """Decoding dominates -> worker processes decode the rest; the forward dominates -> this process keeps
    decoding. Either way every item arrives once, in order, and the choice is recorded."""
    from stecache.extract import decoding

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    got = []
    dec = decoding.Decoded(SlowReader(16, decode_ms), torch.device("cpu"))
    for item in dec:
        got.append(item)
        time.sleep(forward_ms / 1e3)  # the loop's forward
    assert [j for j, _ in got] == list(range(16))
    first = decoding.PROBE + 1  # decoded here while measuring
    assert {pid for _, pid in got[:first]} == {os.getpid()}
    assert (os.getpid() not in {pid for _, pid in got[first:]}) == (workers > 0)
    p = dec.provenance()
    assert p["workers"] == workers and p["chosen"] == "measured"
    expect = decode_ms / (decode_ms + forward_ms)
    assert abs(p["decode_share"] - expect) < 0.25, p  # sleeps overrun on a busy machine: loose


def test_decoding_placement_forced_or_few_clips():
    from stecache.extract import decoding

    dec = decoding.Decoded(SlowReader(8, 0.0), torch.device("cpu"), workers=1)
    assert [j for j, _ in dec] == list(range(8)) and dec.provenance()["chosen"] == "--workers"
    few = decoding.Decoded(SlowReader(decoding.PROBE, 50.0), torch.device("cpu"))
    assert [pid for _, pid in few] == [os.getpid()] * decoding.PROBE
    assert few.provenance()["workers"] == 0 and few.provenance()["chosen"] == "few clips"
    gpu = decoding.Decoded(SlowReader(1, 0.0), torch.device("cuda"))  # not run: the policy alone
    assert gpu.workers >= 1 and gpu.provenance()["chosen"].startswith("policy")


def test_extract_records_where_it_decoded(small, tmp_path):
    from click.testing import CliRunner

    from stecache.cli import cli

    s = extract(small, tmp_path / "c.zarr", FakeBackbone(), cfg=CFG.replace(workers=None))
    c = open_cache(tmp_path / "c.zarr")
    assert c.attrs["extraction"]["decode"] == s["decode"] and s["decode"]["chosen"] == "measured"
    assert 0 <= s["decode"]["decode_share"] <= 1
    np.testing.assert_array_equal(c.read(np.arange(len(c))), _reference(small, FakeBackbone())[:, 0])
    args = ["extract", "--backbone", "videomaev2-tiny", "--data", str(small.root), "--cache", "t.zarr"]
    with CliRunner().isolated_filesystem(tmp_path):
        r = CliRunner().invoke(cli, [*args, "--workers", "0", "--batch-size", "8"])
    assert r.exit_code == 0 and "decoding in the main process (--workers)" in r.output, r.output
