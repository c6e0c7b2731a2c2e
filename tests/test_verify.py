"""A cache that knows its own bytes: every kind of damage (delete, zero, garbage, swap, truncate a shard;
damaged zarr.json, done chunk, labels) is named by `verify`, refused by reads and training, and
`verify --repair` + extract redo exactly the damaged clips. Also: a non-finite feature is a recorded
failure of its clip."""

from __future__ import annotations

import dataclasses
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FakeBackbone

from stecache.cache import Row, create_cache, open_cache
from stecache.cache.verify import row_checksums, verify
from stecache.cli import cli
from stecache.errors import CacheCorrupt, ExtractionFailed, StecacheError
from stecache.extract import ExtractConfig, extract

SHAPE = (2, 3, 4, 4)
SHARD = "features/c/1/0/0/0/0"  # rows 4..7
ROWS = [4, 5, 6, 7]


def _cache(url: Path, views: int = 1):
    """10 clips, 3 classes, train rows 0-6 and val rows 7-9, shards of 4, random features."""
    clips = [Row(f"v/{i}.mp4", (i % 3,), "train" if i < 7 else "val") for i in range(10)]
    c = create_cache(url, clips=clips, class_names=["a", "b", "c"], multi_label=False, feature_shape=SHAPE,
                     num_views=views, provenance={"backbone": {"name": "fake"}}, shard_size=4)  # fmt: skip
    ref = np.random.default_rng(0).standard_normal((10, views, *SHAPE)).astype(np.float16)
    for a, b in c.shards():
        c.write_shard(
            a, ref[a:b, 0], ref[a:b, 1:] if views > 1 else None, np.ones(b - a, bool), [""] * (b - a)
        )
    return ref


def _delete(root: Path):
    (root / SHARD).unlink()


def _zero(root: Path):
    f = root / SHARD
    f.write_bytes(bytes(f.stat().st_size))


def _garbage(root: Path):
    f = root / SHARD
    f.write_bytes(np.random.default_rng(1).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


def _garbage_data_keep_index(root: Path):  # the shard index still parses: only the checksum can tell
    f = root / SHARD
    b = bytearray(f.read_bytes())
    b[10:20] = b"\x7f" * 10
    f.write_bytes(bytes(b))


def _swap(root: Path):
    a, b = root / "features/c/0/0/0/0/0", root / SHARD
    tmp = a.with_name("tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _truncate(root: Path):
    f = root / SHARD
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


DAMAGE = {"delete": _delete, "zero": _zero, "garbage": _garbage, "garbage-data": _garbage_data_keep_index,
          "swap": _swap, "truncate": _truncate}  # fmt: skip


def test_checksums_are_crc32c_of_the_stored_bytes(tmp_path):
    ref = _cache(tmp_path / "c.zarr", views=2)
    c = open_cache(tmp_path / "c.zarr")
    assert c.checksum_hash == "crc32c"
    crc = row_checksums(ref[:3, 0])
    np.testing.assert_array_equal(c.stored_checksums("features")[:3], crc)
    # independent reference: zlib's crc32 through the same path differs; crc32c of row 0 by definition
    import google_crc32c

    assert crc[0] == google_crc32c.value(ref[0, 0].astype("<f2").tobytes())
    assert row_checksums(ref[:1, 0], "crc32")[0] == zlib.crc32(ref[0, 0].tobytes())
    np.testing.assert_array_equal(c.stored_checksums("views"), row_checksums(ref[:, 1]))
    r = verify(tmp_path / "c.zarr")
    assert r.ok and r.rows_checked == 10 and r.bytes_checked == ref.nbytes


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_each_damage_is_named_by_verify_and_refused_on_read(tmp_path, kind):
    url = tmp_path / "c.zarr"
    _cache(url)
    DAMAGE[kind](url)
    r = verify(url)
    assert not r.ok
    # checked per clip: damage inside the data names only the clip it hits
    expect = {"swap": [0, 1, 2, 3, 4, 5, 6, 7], "garbage-data": [4]}.get(kind, ROWS)
    assert [b.row for b in r.bad] == expect
    assert {b.file for b in r.bad if b.row in ROWS} == {SHARD}
    assert all(b.clip_id == f"v/{b.row}.mp4" for b in r.bad)
    c = open_cache(url)
    np.testing.assert_array_equal(c.read([0, 8]).shape, (2, *SHAPE)) if kind != "swap" else None
    with pytest.raises(CacheCorrupt, match=r"features/c/1/0/0/0/0|damaged") as e:
        c.read([4])
    assert "\n" not in str(e.value) and len(str(e.value)) < 300
    # the CLI: one line naming the damage, exit 1
    res = CliRunner().invoke(cli, ["verify", str(url)])
    assert res.exit_code == 1 and "v/4.mp4" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["info", str(url)])
    assert res.exit_code == 0 and "damaged clip(s)" in res.output


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_training_refuses_a_damaged_cache_naming_shard_and_clips(tmp_path, kind):
    url = tmp_path / "c.zarr"
    _cache(url)
    DAMAGE[kind](url)
    res = CliRunner().invoke(cli, ["train-head", "--cache", str(url), "--head", "meanfc", "--epochs", "1",
                                   "--runs", str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 1, res.output
    line = res.output.strip().splitlines()[-1]
    first = "v/0.mp4" if kind == "swap" else "v/4.mp4"  # swap: shard 0 is read (and fails) first
    assert SHARD.replace("/1/", "/0/" if kind == "swap" else "/1/") in line and first in line, line
    assert "Traceback" not in res.output and len(line) < 300
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("best.safetensors"))


def test_evaluate_on_a_damaged_copy_is_refused(tmp_path):
    url = tmp_path / "c.zarr"
    _cache(url)
    res = CliRunner().invoke(cli, ["train-head", "--cache", str(url), "--head", "meanfc", "--epochs", "1",
                                   "--out", str(tmp_path / "run")])  # fmt: skip
    assert res.exit_code == 0, res.output
    shutil.copytree(url, tmp_path / "copy.zarr")
    ok = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run"), "--split", "val",
                                  "--cache", str(tmp_path / "copy.zarr")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    f = tmp_path / "copy.zarr/features/c/2/0/0/0/0"  # rows 8, 9: val
    b = bytearray(f.read_bytes())
    b[0:8] = b"\x00\x3c" * 4  # four fp16 ones
    f.write_bytes(bytes(b))
    bad = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run"), "--split", "val",
                                   "--cache", str(tmp_path / "copy.zarr")])  # fmt: skip
    assert bad.exit_code == 1 and "v/8.mp4" in bad.output and "Traceback" not in bad.output
    # a consistent copy (checksums match its bytes) with other content: refused by the content digest
    shutil.copytree(url, tmp_path / "other.zarr")
    other = open_cache(tmp_path / "other.zarr", "r+")
    other.write_shard(8, np.ones((2, *SHAPE), np.float16), None, np.ones(2, bool), ["", ""])
    assert verify(tmp_path / "other.zarr").ok
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run"), "--split", "val",
                                   "--cache", str(tmp_path / "other.zarr")])  # fmt: skip
    assert res.exit_code == 1 and "other content" in res.output, res.output


@pytest.mark.parametrize("what", ["zarr.json", "done", "labels", "features/zarr.json"])
def test_damaged_metadata_is_one_typed_line(tmp_path, what):
    url = tmp_path / "c.zarr"
    _cache(url)
    f = {"zarr.json": url / "zarr.json", "done": url / "done/c/0", "labels": url / "labels/c/0/0",
         "features/zarr.json": url / "features/zarr.json"}[what]  # fmt: skip
    f.write_bytes(b"\x00garbage{" * 7)
    if what in ("zarr.json", "features/zarr.json"):
        with pytest.raises(CacheCorrupt):
            open_cache(url)
    else:
        r = verify(url)
        assert not r.ok and any(what in p for p in r.problems)
    for args in (["verify", str(url)], ["info", str(url)]):
        res = CliRunner().invoke(cli, args)
        if what == "labels" and args[0] == "info":
            continue  # info prints per-class counts: it reads labels (checked below via verify)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert "damaged" in res.output and len(res.output.strip().splitlines()[-1]) < 300


def test_repair_then_extract_redoes_exactly_the_damaged_clips(synth_dir, tmp_path):
    from stecache.annotations import load_dataset_dir

    ds = load_dataset_dir(synth_dir)
    ds = dataclasses.replace(ds, clips=ds.clips[:12])
    cfg = ExtractConfig(shard_size=4, batch_size=4, workers=0, progress=False)
    url = tmp_path / "c.zarr"
    extract(ds, url, FakeBackbone(), cfg=cfg)
    pristine = open_cache(url).read(np.arange(12))
    _garbage(url)
    res = CliRunner().invoke(cli, ["verify", str(url), "--repair"])
    assert res.exit_code == 0 and "repaired: 4 clip(s)" in res.output, res.output
    c = open_cache(url)
    np.testing.assert_array_equal(c.done, [i not in ROWS for i in range(12)])
    calls = []

    class Counting(FakeBackbone):
        def forward(self, clips):
            calls.append(len(clips))
            return super().forward(clips)

    s = extract(ds, url, Counting(), cfg=cfg)
    assert s["extracted"] == 4 and sum(calls) == 4 and s["already_done"] == 8
    assert verify(url).ok
    np.testing.assert_array_equal(open_cache(url).read(np.arange(12)), pristine)
    assert "last verify" in CliRunner().invoke(cli, ["info", str(url)]).output


def test_extract_refuses_to_launder_a_damaged_partial_shard(synth_dir, tmp_path):
    """Re-reading the done rows of a partly done shard checks them: damage is not re-checksummed."""
    from stecache.annotations import load_dataset_dir

    ds = dataclasses.replace(load_dataset_dir(synth_dir), clips=load_dataset_dir(synth_dir).clips[:8])
    cfg = ExtractConfig(shard_size=4, batch_size=4, workers=0, progress=False)
    url = tmp_path / "c.zarr"
    extract(ds, url, FakeBackbone(), cfg=cfg)
    c = open_cache(url, "r+")
    c.mark_not_done(np.array([6]))
    _garbage_data_keep_index(url)  # damages row 4 of shard 1, which stays "done"
    with pytest.raises(CacheCorrupt, match="v|damaged"):
        extract(ds, url, FakeBackbone(), cfg=cfg)


def test_non_finite_features_are_a_recorded_failure_of_that_clip(synth_dir, tmp_path):
    from stecache.annotations import load_dataset_dir

    ds = load_dataset_dir(synth_dir)
    ds = dataclasses.replace(ds, clips=ds.clips[:8])
    bad_id = ds.clips[5].clip_id
    target = {}

    class NaNForOne(FakeBackbone):
        def forward(self, clips):
            y = super().forward(clips)
            for i, x in enumerate(clips):  # the clip whose pixels match clip 5's: NaN features
                if torch.equal(x, target["x"]):
                    y[i, 0, 0, 0, 0] = float("nan")
            return y

    from stecache.extract import load_views, plan_views

    bb = NaNForOne()
    cfg = ExtractConfig(shard_size=4, batch_size=3, workers=0, progress=False)
    target["x"] = load_views(ds.root / ds.clips[5].path, plan_views(bb, cfg), 5)[0]
    url = tmp_path / "c.zarr"
    with pytest.raises(ExtractionFailed, match="non-finite"):
        extract(ds, url, bb, cfg=cfg)
    c = open_cache(url)
    assert c.done.tolist() == [i != 5 for i in range(8)]
    assert "non-finite" in c.error[5] and c.clip_id[5] == bad_id
    assert (c.error[[0, 1, 2, 3, 4, 6, 7]] == "").all()
    assert np.isfinite(c.read(np.flatnonzero(c.done)).astype(np.float32)).all()
    assert verify(url).ok


def test_cache_without_checksums_is_reported_not_failed(tmp_path):
    url = tmp_path / "c.zarr"
    _cache(url)
    shutil.rmtree(url / "features_checksum")
    c = open_cache(url)
    assert c.checksum_hash is None and c.read([1]).shape == (1, *SHAPE)
    r = verify(url)
    assert not r.ok and any("no checksums" in line for line in r.lines())
    assert "none (made before" in c.describe()


def test_verify_of_a_missing_cache_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(cli, ["verify", str(tmp_path / "nope.zarr")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    with pytest.raises(StecacheError):
        verify(tmp_path / "nope.zarr")


def test_import_h5_non_finite_rows_are_recorded_failures(tmp_path):
    import h5py

    from stecache.cache import import_h5

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x[2, 1] = np.inf
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"], f["labels"] = x, np.array([0, 1, 0, 1])
    c = import_h5(tmp_path / "f.h5", tmp_path / "c.zarr")
    assert c.done.tolist() == [True, True, False, True] and "NonFiniteFeatures" in c.error[2]
    np.testing.assert_array_equal(c.read([0, 3])[:, 0, :, 0, 0], x[[0, 3]])
    assert verify(tmp_path / "c.zarr").ok
