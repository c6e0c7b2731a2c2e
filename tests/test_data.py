"""data: RAM vs streaming give the same batches, shard-aware order, the balanced sampler's proportions."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stecache import data as D
from stecache.errors import CacheIncomplete, EmptySplit, StecacheError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """96 clips, 3 views, 8 clips per shard (12 shards)."""
    url = str(tmp_path_factory.mktemp("data") / "toy.zarr")
    return D.toy_cache(url, n_clips=96, num_views=3, shard_size=8)


def test_ram_limit_parsing(monkeypatch):
    assert D.ram_limit("2G") == 2 << 30
    assert D.ram_limit("512m") == 512 << 20
    assert D.ram_limit(1000) == 1000
    monkeypatch.setenv("STECACHE_RAM_LIMIT", "3K")
    assert D.ram_limit() == 3072
    with pytest.raises(StecacheError, match="not a size"):
        D.ram_limit("lots")


def test_ram_and_streaming_serve_the_same_rows(toy, caplog):
    caplog.set_level(logging.INFO, logger="stecache.data")
    ram = D.load_split(toy, "train", views="all")
    stream = D.load_split(toy, "train", views="all", limit=1000)
    assert ram.in_ram and not stream.in_ram
    assert "loaded into RAM" in caplog.text and "streaming, 1 shard(s) of 8 rows" in caplog.text
    want = toy.read_views(ram.rows)  # [M, 3, n, c, h, w]
    np.testing.assert_array_equal(ram.features, want)
    order = D.epoch_rows(len(stream), seed=0, epoch=0)
    views = D.epoch_views(len(stream), 3, seed=0, epoch=0)
    for data in (ram, stream):
        for bs in (3, 10, 64):  # smaller and larger than a streamed buffer (1 shard of 8 rows)
            seen = []
            for pos, x in D.batches(data, order, bs, views, seed=5):
                assert x.shape[1] == 1 and len(pos) == bs or len(seen) == len(data) // bs
                np.testing.assert_array_equal(x[:, 0], want[pos, views[pos]])
                seen.append(pos)
            seen = np.concatenate(seen)
            assert sorted(seen) == list(range(len(data)))  # every row exactly once
    for data in (ram, stream):  # in RAM, or without a seed (evaluation): the given order as is
        np.testing.assert_array_equal(np.concatenate([p for p, _ in D.batches(data, order, 10)]), order)
    shuffled = np.concatenate([p for p, _ in D.batches(stream, order, 10, seed=5)])
    assert not np.array_equal(shuffled, order)


def test_streaming_reads_stay_within_a_few_shards(toy):
    stream = D.load_split(toy, "train", limit=1)
    assert stream.buffer_shards == 1  # the RAM limit caps the buffer too
    stream.buffer_shards = D.BUFFER_SHARDS
    order = D.epoch_rows(len(stream), seed=1, epoch=3)
    groups = D.shard_order(stream, order, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.sort(order))
    shards_per_group = [len(np.unique(stream.rows[g] // 8)) for g in groups]
    assert max(shards_per_group) <= D.BUFFER_SHARDS
    assert len(groups) == -(-len(np.unique(stream.rows // 8)) // D.BUFFER_SHARDS)
    # shuffled: neither the shard order nor the rows within a group are sorted
    firsts = [stream.rows[g[0]] // 8 for g in groups]
    assert firsts != sorted(firsts) or any((np.diff(stream.rows[g]) < 0).any() for g in groups)


def test_same_seed_same_epoch_same_order():
    np.testing.assert_array_equal(D.epoch_rows(50, 3, 7), D.epoch_rows(50, 3, 7))
    assert not np.array_equal(D.epoch_rows(50, 3, 7), D.epoch_rows(50, 3, 8))


def test_sample_weights_values():
    single = np.eye(3, dtype=np.uint8)[[0, 0, 0, 1, 2]]  # counts 3, 1, 1
    np.testing.assert_allclose(D.sample_weights(single), [1 / 3, 1 / 3, 1 / 3, 1, 1])
    multi = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])  # counts 2, 1, 1; last: no label
    np.testing.assert_allclose(D.sample_weights(multi), [(1 / 2 + 1) / 2, 1 / 2, 1, 1])


def test_balanced_sampler_draws_classes_equally():
    counts = [100, 20, 5]
    labels = np.eye(3, dtype=np.uint8)[np.repeat([0, 1, 2], counts)]
    w = D.sample_weights(labels)
    draws = np.concatenate([D.epoch_rows(len(labels), seed=0, epoch=e, weights=w) for e in range(240)])
    freq = labels[draws].sum(0) / len(draws)  # 30000 draws
    sigma = np.sqrt(1 / 3 * 2 / 3 / len(draws))  # ≈ 0.0027
    np.testing.assert_allclose(freq, 1 / 3, atol=5 * sigma)  # unbalanced would be 0.80 / 0.16 / 0.04
    plain = np.concatenate([D.epoch_rows(len(labels), seed=0, epoch=e) for e in range(10)])
    np.testing.assert_allclose(labels[plain].sum(0) / len(plain), np.array(counts) / 125)


def test_balanced_sampler_multi_label_proportions():
    # class 0 is common and co-occurs with class 1; class 2 is rare
    labels = np.array([[1, 0, 0]] * 60 + [[1, 1, 0]] * 20 + [[0, 1, 0]] * 10 + [[0, 0, 1]] * 10)
    w = D.sample_weights(labels)  # counts 80, 30, 10
    w_hand = np.array([1 / 80] * 60 + [(1 / 80 + 1 / 30) / 2] * 20 + [1 / 30] * 10 + [1 / 10] * 10)
    np.testing.assert_allclose(w, w_hand)
    p = w_hand / w_hand.sum()
    expected = labels.T @ p  # P(a drawn clip carries class k)
    draws = np.concatenate([D.epoch_rows(len(labels), seed=1, epoch=e, weights=w) for e in range(400)])
    freq = labels[draws].sum(0) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / len(draws)))
    assert freq[2] > 0.3 > labels[:, 2].mean()  # the rare class is drawn far above its 10 % share


def test_incomplete_cache_and_failures(tmp_path):
    url = str(tmp_path / "partial.zarr")
    cache = D.toy_cache(url, n_clips=24, shard_size=8, pending_shards=1)
    with pytest.raises(CacheIncomplete, match="8 of 24 clips not extracted"):
        D.check_complete(cache)
    x = np.zeros((8, *cache.feature_shape), np.float16)
    cache.write_shard(16, x, None, np.zeros(8, bool), ["decode failed"] * 8)  # recorded failures
    assert D.check_complete(cache) == 8
    assert 16 not in D.load_split(cache, "train").rows
    with pytest.raises(EmptySplit, match="'nosuch'"):
        D.load_split(cache, "nosuch")


def test_prefetch_reraises():
    def gen():
        yield 1
        raise ValueError("boom")

    it = D.prefetch(gen())
    assert next(it) == 1
    with pytest.raises(ValueError, match="boom"):
        next(it)
    assert list(D.prefetch(iter(range(5)))) == list(range(5))


def test_test_views_leave_out_augmented_train_views(toy, monkeypatch):
    """Evaluation averages the test protocol's views only, never the augmented views stored after them."""
    monkeypatch.setitem(toy.attrs, "views", {"count": 3, "test": [1, 1], "train": 2})
    assert [D.view_count(toy, v) for v in ("first", "test", "all")] == [1, 1, 3]
    monkeypatch.setitem(toy.attrs, "views", {"count": 3, "test": [2, 1], "train": 1})
    for limit in (None, 1000):  # in RAM and streamed
        split = D.load_split(toy, "val", views="test", limit=limit)
        assert split.views == 2
        np.testing.assert_array_equal(split.read(np.arange(4)), toy.read_views(split.rows[:4])[:, :2])


def test_batch_order_does_not_depend_on_ram_or_streaming(toy):
    """Issue 14: one seeded order for both modes and every RAM limit (same positions, same features)."""
    splits = [D.load_split(toy, "train", views="all", limit=lim) for lim in (None, 1, "100K", "160K")]
    assert splits[0].in_ram and [s.buffer_shards for s in splits[1:]] == [1, 2, 3]
    w = D.sample_weights(splits[0].labels)
    for order in (D.epoch_rows(len(splits[0]), 4, 2), D.epoch_rows(len(splits[0]), 4, 2, w)):  # dupes too
        views = D.epoch_views(len(order), 3, 4, 2)
        runs = [list(D.batches(s, order, 7, views, seed=6)) for s in splits]
        for other in runs[1:]:
            assert len(other) == len(runs[0])
            for (p0, x0), (p1, x1) in zip(runs[0], other, strict=True):
                np.testing.assert_array_equal(p0, p1)
                np.testing.assert_array_equal(x0, x1)
        got = np.concatenate([p for p, _ in runs[0]])
        assert not np.array_equal(got, order) and sorted(got) == sorted(order)  # reshuffled, same draws


def test_read_ahead_hides_slow_shard_reads():
    """A producer that stalls 60 ms every 8th item (a streamed buffer read) and a consumer stepping 10 ms:
    two items ahead wait ~40 ms per stall; the measured read-ahead (depth None) hides most of it.
    Items and their order are unchanged."""
    import time

    def source():
        for i in range(48):
            if i % 8 == 0:
                time.sleep(0.06)
            yield (np.full(4, i),)

    def consume(depth):
        wait, got, t = 0.0, [], time.perf_counter()
        for (x,) in D.prefetch(source(), depth):
            wait += time.perf_counter() - t
            got.append(int(x[0]))
            time.sleep(0.01)
            t = time.perf_counter()
        return wait, got

    fixed, got_fixed = consume(2)
    auto, got_auto = consume(None)
    assert got_fixed == got_auto == list(range(48))
    assert auto < 0.5 * fixed, (auto, fixed)
    assert D.read_ahead(0.06, 0.01, 100) == 7 and D.read_ahead(0.06, 0.01, 10**9) == 2  # memory cap
