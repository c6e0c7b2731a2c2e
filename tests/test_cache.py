"""Tests of the zarr feature cache: round trips, refusal of other settings, locking, HDF5 import/export."""

from __future__ import annotations

import multiprocessing
import time

import h5py
import numpy as np
import pytest

from stecache.cache import (
    Row,
    attrs_diff,
    create_cache,
    default_shard_size,
    export_h5,
    import_h5,
    lock,
    open_cache,
)
from stecache.errors import AnnotationError, CacheBusy, CacheMismatch, StecacheError

SHAPE = (2, 3, 4, 4)  # (n, c, h, w)
PROV = {"backbone": {"name": "fake", "config": {"depth": 2}, "weights": "random"}, "views": {"test": [1, 1]}}


def _clips(n: int = 10) -> list[Row]:
    return [Row(f"v/{i}.mp4", (i % 3,), "train" if i < 7 else "val") for i in range(n)]


def _make(url, clips=None, views: int = 1, dtype="float16", shard_size=4, prov=PROV, codec="none"):
    clips = _clips() if clips is None else clips
    return create_cache(
        url,
        clips=clips,
        class_names=["a", "b", "c"],
        multi_label=False,
        feature_shape=SHAPE,
        num_views=views,
        provenance=prov,
        dtype=dtype,
        shard_size=shard_size,
        codec=codec,
    )


def _fill(cache, seed=0):
    """Write every shard with random features; returns the [N, V, n, c, h, w] float32 reference."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((len(cache), cache.num_views, *SHAPE)).astype(np.float32)
    for a, b in cache.shards():
        views = ref[a:b, 1:] if cache.num_views > 1 else None
        cache.write_shard(a, ref[a:b, 0], views, np.ones(b - a, bool), [""] * (b - a))
    return ref


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_round_trip_features_labels_provenance(tmp_path, dtype, codec):
    cache = _make(tmp_path / "c.zarr", views=3, dtype=dtype, codec=codec)
    ref = _fill(cache).astype(dtype)
    c = open_cache(tmp_path / "c.zarr")
    assert len(c) == 10 and c.feature_shape == SHAPE and c.num_views == 3 and c.dtype == dtype
    assert c.shards() == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(c.read(np.arange(10)), ref[:, 0])
    np.testing.assert_array_equal(c.read([7, 2, 2, 9]), ref[[7, 2, 2, 9], 0])  # any order, repeats
    np.testing.assert_array_equal(c.read(slice(3, 6)), ref[3:6, 0])
    np.testing.assert_array_equal(c.read_views([5, 0]), ref[[5, 0]])
    assert c.read([]).shape == (0, *SHAPE)
    assert c.read([1]).dtype == np.dtype(dtype)
    expect = np.zeros((10, 3), np.uint8)
    expect[np.arange(10), np.arange(10) % 3] = 1
    np.testing.assert_array_equal(c.labels(), expect)
    np.testing.assert_array_equal(c.label_index(), np.arange(10) % 3)
    assert c.clip_id.tolist() == [f"v/{i}.mp4" for i in range(10)]
    np.testing.assert_array_equal(c.rows("val"), [7, 8, 9])
    np.testing.assert_array_equal(c.rows(), np.arange(10))
    assert c.attrs["backbone"] == PROV["backbone"] and c.attrs["views"] == PROV["views"]
    assert c.class_names == ("a", "b", "c") and not c.multi_label
    assert c.attrs["stecache_version"] and c.attrs["format_version"] == 1 and len(c.fingerprint) == 16


def test_done_only_rows_written_and_errors(tmp_path):
    cache = _make(tmp_path / "c.zarr")
    x = np.ones((4, *SHAPE), np.float32)
    cache.write_shard(4, x, None, np.array([1, 0, 1, 1], bool), ["", "CorruptVideo: bad", "", ""])
    c = open_cache(tmp_path / "c.zarr")
    np.testing.assert_array_equal(c.rows(), [4, 6, 7])
    assert c.error[5] == "CorruptVideo: bad" and (c.error[[0, 4, 9]] == "").all()
    assert c.read([0]).sum() == 0  # never-written rows read as zeros
    with pytest.raises(ValueError, match="whole shard"):
        cache.write_shard(2, x, None, np.ones(4, bool), [""] * 4)
    text = c.describe()
    assert "done          3/10  failed 1" in text and "CorruptVideo: bad" in text and "on disk" in text


def test_reopen_same_settings_and_refuse_other_settings(tmp_path):
    url = tmp_path / "c.zarr"
    c1 = _make(url)
    ref = _fill(c1)
    c2 = _make(url, shard_size=8)  # same content settings: reopened, storage layout of the cache kept
    assert c2.fingerprint == c1.fingerprint and c2.shard_size == 4
    np.testing.assert_array_equal(c2.read(np.arange(10)), ref[:, 0].astype(np.float16))
    other = {**PROV, "backbone": {**PROV["backbone"], "config": {"depth": 4}}}
    with pytest.raises(CacheMismatch, match=r"backbone\.config\.depth: cache=2 now=4"):
        _make(url, prov=other)
    with pytest.raises(CacheMismatch, match="dtype"):
        _make(url, dtype="float32")
    with pytest.raises(CacheMismatch, match="manifest"):
        _make(url, clips=_clips()[::-1])  # same clips, other order: rows would move
    assert open_cache(url).done.all()  # refusals touched nothing


def test_attrs_diff_lists_nested_and_absent_keys():
    old = {"a": {"b": 1, "c": [1, 2]}, "created": "x", "d": 1}
    new = {"a": {"b": 1, "c": [1, 3]}, "created": "y", "e": "z"}
    assert attrs_diff(old, new) == [
        "a.c: cache=[1, 2] now=[1, 3]",
        'd: cache=1 now="<absent>"',
        'e: cache="<absent>" now="z"',
    ]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(AnnotationError, match="label 5 outside"):
        _make(tmp_path / "a.zarr", clips=[Row("x", (5,), "train")])
    with pytest.raises(AnnotationError, match="more than once"):
        _make(tmp_path / "b.zarr", clips=[Row("x", (0,), "train"), Row("x", (1,), "val")])
    with pytest.raises(AnnotationError, match="at most one label"):
        _make(tmp_path / "c.zarr", clips=[Row("x", (0, 1), "train")])
    (tmp_path / "d.zarr").mkdir()
    (tmp_path / "d.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(StecacheError, match="not a cache"):
        _make(tmp_path / "d.zarr")
    with pytest.raises(StecacheError, match="no feature cache"):
        open_cache(tmp_path / "nothing.zarr")


def test_multi_label(tmp_path):
    clips = [Row("a", (0, 2), "train"), Row("b", (), "train"), Row("c", (1,), "test")]
    c = create_cache(
        tmp_path / "m.zarr",
        clips=clips,
        class_names=["x", "y", "z"],
        multi_label=True,
        feature_shape=SHAPE,
        num_views=1,
        provenance=PROV,
    )
    np.testing.assert_array_equal(c.labels(), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    with pytest.raises(StecacheError, match="multi-label"):
        c.label_index()


def test_default_shard_size():
    assert default_shard_size((8, 768, 14, 14), 1, "float16") == 32  # 2.4 MB rows -> ~77 MB shards
    assert default_shard_size((8, 768, 14, 14), 15, "float32") == 1
    assert default_shard_size((2, 16, 2, 2), 1, "float16") == 64


def _hold_lock(url, started, release):
    with lock(url):
        started.set()
        release.wait(10)


def test_lock_refuses_second_writer_and_frees_on_exit(tmp_path):
    url = tmp_path / "c.zarr"
    ctx = multiprocessing.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(url, started, release))
    p.start()
    assert started.wait(30)
    with pytest.raises(CacheBusy, match=rf"busy, pid {p.pid} on"):
        with lock(url):
            pass
    p.kill()  # like SIGKILL of an extract: the kernel drops the flock
    p.join()
    t = time.time()
    with lock(url):
        assert time.time() - t < 1


def test_hdf5_round_trip(tmp_path):
    src = _make(tmp_path / "a.zarr", views=2)
    ref = _fill(src)
    src.write_shard(8, ref[8:, 0], ref[8:, 1:], np.array([True, False]), ["", "EmptyVideo: x"])
    export_h5(tmp_path / "a.zarr", tmp_path / "f.h5")
    back = import_h5(tmp_path / "f.h5", tmp_path / "b.zarr")
    a = open_cache(tmp_path / "a.zarr")
    assert back.fingerprint == a.fingerprint and back.attrs["backbone"] == PROV["backbone"]
    np.testing.assert_array_equal(back.read_views(np.arange(10)), a.read_views(np.arange(10)))
    np.testing.assert_array_equal(back.labels(), a.labels())
    np.testing.assert_array_equal(back.done, a.done)
    assert back.clip_id.tolist() == a.clip_id.tolist() and back.split.tolist() == a.split.tolist()
    assert back.error[9] == "EmptyVideo: x" and back.class_names == ("a", "b", "c")


def test_import_foreign_hdf5(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 12)).astype(np.float32)  # pooled features of another tool
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["feats"] = x
        f["y"] = np.array([0, 1, 1, 0, 2])
    c = import_h5(tmp_path / "other.h5", tmp_path / "o.zarr", features="feats", labels="y")
    assert c.feature_shape == (1, 12, 1, 1) and c.dtype == "float32" and c.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(c.read(np.arange(5))[:, 0, :, 0, 0], x)
    np.testing.assert_array_equal(c.label_index(), [0, 1, 1, 0, 2])
    assert c.done.all() and c.clip_id[3] == "row000003" and c.attrs["backbone"]["name"] == "hdf5:other.h5"
    with pytest.raises(StecacheError, match="no dataset 'labels'"):
        import_h5(tmp_path / "other.h5", tmp_path / "p.zarr", features="feats")


def test_raw_fast_path_equals_zarr_reads(tmp_path):
    from stecache.cache.raw import take as _take

    cache = _make(tmp_path / "c.zarr", views=2, shard_size=4)
    ref = _fill(cache)
    cache.write_shard(4, ref[4:8, 0], ref[4:8, 1:], np.array([1, 0, 1, 1], bool), ["", "x", "", ""])
    c = open_cache(tmp_path / "c.zarr")
    assert c._raw_dir("features") is not None and c._raw_dir("views") is not None
    rows = [9, 0, 5, 5, 3, 8, 1]  # across shards, the partial last shard, repeats, any order
    np.testing.assert_array_equal(c.read(rows), _take(c._features, rows))
    np.testing.assert_array_equal(c.read_views(rows), ref[rows].astype(np.float16))
    empty = _make(tmp_path / "e.zarr", shard_size=4)  # nothing written: rows read as the fill value 0
    np.testing.assert_array_equal(empty.read([6, 1]), np.zeros((2, *SHAPE), np.float16))
    with pytest.raises(IndexError):
        c.read([10, 1])
    assert open_cache(_make(tmp_path / "z.zarr", codec="lz4").url)._raw_dir("features") is None


def test_fsspec_url(tmp_path):
    cache = _make("memory://stecache-test.zarr", views=2)
    ref = _fill(cache)
    c = open_cache("memory://stecache-test.zarr")
    assert c._raw_dir("features") is None and c.nbytes_on_disk() is None  # zarr reads for remote stores
    np.testing.assert_array_equal(c.read_views([8, 1]), ref[[8, 1]].astype(np.float16))


def test_cli_info_export_import(tmp_path):
    from click.testing import CliRunner

    from stecache.cache import CODECS
    from stecache.cli import cli
    from stecache.cli.extract import CODEC_NAMES

    assert CODEC_NAMES == tuple(sorted(CODECS))
    cache = _make(tmp_path / "a.zarr")
    _fill(cache)
    run = CliRunner().invoke
    out = run(cli, ["info", str(tmp_path / "a.zarr")])
    assert (
        out.exit_code == 0
        and "done          10/10  failed 0" in out.output
        and cache.fingerprint in out.output
    )
    assert run(cli, ["export-h5", str(tmp_path / "a.zarr"), str(tmp_path / "a.h5")]).exit_code == 0
    out = run(cli, ["import-h5", str(tmp_path / "a.h5"), str(tmp_path / "b.zarr")])
    assert out.exit_code == 0 and cache.fingerprint in out.output
    out = run(cli, ["info", str(tmp_path / "missing.zarr")])
    assert out.exit_code == 1 and "no feature cache" in out.output


def test_half_created_cache_is_recreated(tmp_path):
    c = _make(tmp_path / "c.zarr")
    attrs = {k: v for k, v in c.attrs.items() if k != "fingerprint"}
    c.group.attrs.put(attrs)  # as if killed between creating the arrays and writing the attributes
    with pytest.raises(CacheMismatch, match="not a complete"):
        open_cache(tmp_path / "c.zarr")
    again = _make(tmp_path / "c.zarr")
    assert again.fingerprint == c.fingerprint and not again.done.any()


def test_import_of_a_non_hdf5_file_is_a_one_line_error(tmp_path):
    from stecache.errors import StecacheError

    (tmp_path / "notes.txt").write_text("not hdf5")
    with pytest.raises(StecacheError, match="notes.txt: not a readable HDF5 file"):
        import_h5(tmp_path / "notes.txt", tmp_path / "c.zarr")
