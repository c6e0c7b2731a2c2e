"""Tests for stecache.synth: determinism, layout, and that each class has the property it was designed for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stecache.cli import cli
from stecache.synth import (
    CLASSES,
    FLASH_FRAMES,
    WEIGHTS,
    _draw_labels,
    event_box,
    render_clip,
    synthesize,
    visible_frames,
)
from stecache.video import decode_frames, load_clip, load_dataset_dir, read_annotations


def records(root) -> list[dict]:
    return [json.loads(line) for line in (root / "clips.jsonl").read_text().splitlines()]


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(a, n_clips=8, seed=3)
    synthesize(b, n_clips=8, seed=3)
    synthesize(c, n_clips=8, seed=4)
    for name in ["classes.txt", "train.txt", "val.txt", "test.txt", "dataset.json", "clips.jsonl"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for rec in records(a):
        fa, fb = a / rec["path"], b / rec["path"]
        assert fa.read_bytes() == fb.read_bytes()
        T = rec["frames"]
        assert np.array_equal(decode_frames(fa, range(T)), decode_frames(fb, range(T)))
    assert (a / "clips.jsonl").read_bytes() != (c / "clips.jsonl").read_bytes()
    assert (a / "videos/clip_00000.mp4").read_bytes() != (c / "videos/clip_00000.mp4").read_bytes()


def test_layout_sizes_lengths_splits_and_imbalance(synth_dir):
    meta = json.loads((synth_dir / "dataset.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["seed"] == 0 and meta["multi_label"] is False
    assert (synth_dir / "classes.txt").read_text().split() == list(CLASSES)
    recs = records(synth_dir)
    assert len(recs) == 48
    for split in ("train", "val", "test"):
        clips = read_annotations(synth_dir / f"{split}.txt", data_root=synth_dir, classes=CLASSES)
        assert {c.labels[0] for c in clips} == set(range(len(CLASSES))), f"every class in {split}"
        assert [(c.path, list(c.labels)) for c in clips] == [
            (r["path"], r["labels"]) for r in recs if r["split"] == split
        ]
    for r in recs:
        assert 8 <= r["frames"] <= 64
        assert 24 <= min(r["height"], r["width"]) and max(r["height"], r["width"]) <= 162
        assert r["height"] % 2 == 0 and r["width"] % 2 == 0
    assert len({(r["height"], r["width"]) for r in recs}) > 20 and len({r["frames"] for r in recs}) > 20
    counts = np.bincount([r["labels"][0] for r in recs], minlength=len(CLASSES))
    assert counts[0] == counts.max()  # "others" is the most common class


def test_class_frequencies_are_long_tailed():
    labels = _draw_labels(5000, False, np.random.default_rng(0))
    freq = np.bincount([ls[0] for ls in labels], minlength=len(CLASSES)) / 5000
    np.testing.assert_allclose(freq, WEIGHTS, atol=0.02)
    assert freq.max() > 3 * freq.min()  # "others" vs the rare fleeting "flash"


def test_every_class_has_its_designed_property(synth_dir):
    for r in records(synth_dir):
        T, H, W = r["frames"], r["height"], r["width"]
        names = [CLASSES[k] for k in r["labels"]]
        assert sorted(e["class"] for e in r["events"]) == sorted(n for n in names if n != "others")
        s = min(H, W)
        for ev in r["events"]:
            vis = visible_frames(ev, T)
            assert vis == list(range(vis[0], vis[-1] + 1)), "one contiguous interval"
            boxes = [event_box(ev, t, T) for t in vis]
            for y, x, size in boxes:  # inside the central square, which a centre crop keeps
                assert (H - s) // 2 <= y and y + size <= (H - s) // 2 + s
                assert (W - s) // 2 <= x and x + size <= (W - s) // 2 + s
            xs = [b[1] for b in boxes]
            kind = ev["class"]
            if kind == "flash":
                assert FLASH_FRAMES[0] <= len(vis) <= FLASH_FRAMES[1]
            elif kind == "appear":
                assert vis[0] > 0 and vis[-1] == T - 1
            elif kind == "vanish":
                assert vis[0] == 0 and vis[-1] < T - 1
            elif kind == "left_to_right":
                assert xs[-1] > xs[0] and np.all(np.diff(xs) >= 0)
            elif kind == "right_to_left":
                assert xs[-1] < xs[0] and np.all(np.diff(xs) <= 0)
            elif kind == "local":
                assert vis == list(range(T)) and boxes[0][2] <= 0.25 * s + 1


def test_reversed_classes_are_exact_time_reversals():
    """With noise and distractors off, a vanish clip is an appear clip played backwards (same for slides)."""
    spec = {"frames": 11, "height": 24, "width": 32, "background": [20, 30, 40], "gradient": [5.0, -3.0],
            "noise": 0.0, "noise_seed": 0, "distractors": []}  # fmt: skip
    for base, reverse in [("appear", "vanish"), ("left_to_right", "right_to_left")]:
        ev = {"class": base, "reversed": False, "color": [200, 10, 10], "size": 7, "y": 5, "x": [4, 21],
              "start": 3, "end": 10}  # fmt: skip
        forward = render_clip({**spec, "events": [ev]})
        backward = render_clip({**spec, "events": [{**ev, "class": reverse, "reversed": True}]})
        assert np.array_equal(backward, forward[::-1])
        assert not np.array_equal(backward, forward)


def test_decoded_flash_is_visible_exactly_in_its_frames(synth_dir):
    rec = next(r for r in records(synth_dir) if r["labels"] == [CLASSES.index("flash")])
    T, ev = rec["frames"], rec["events"][0]
    frames = decode_frames(synth_dir / rec["path"], range(T)).astype(float)
    y, x, s = next(event_box(ev, t, T) for t in range(T) if event_box(ev, t, T))
    inner = frames[:, y + 1 : y + s - 1, x + 1 : x + s - 1].mean(axis=(1, 2, 3))  # [T]
    bright = [t for t in range(T) if inner[t] > 200]
    assert bright == visible_frames(ev, T) and 2 <= len(bright) <= 5


def test_multi_label_variant(tmp_path):
    out = tmp_path / "ml"
    summary = synthesize(out, n_clips=30, seed=1, multi_label=True)
    assert "multi-label" in summary
    ds = load_dataset_dir(out)
    assert ds.multi_label and len(ds.clips) == 30
    assert any(len(c.labels) == 2 for c in ds.clips)
    for c in ds.clips:
        assert len(c.labels) == 1 or 0 not in c.labels  # "others" never with an event
    for r in records(out):
        assert sorted(e["class"] for e in r["events"]) == sorted(CLASSES[k] for k in r["labels"] if k != 0)


def test_cli_synth(tmp_path):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "s"), "--clips", "4", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 clips" in result.output
    assert len(list((tmp_path / "s" / "videos").glob("*.mp4"))) == 4


@pytest.mark.slow
def test_classes_are_learnable_through_a_crude_encoder(tmp_path):
    """FakeBackbone (4x4x4 average pool of the centre crop) + a linear probe beats chance by far."""
    from conftest import FakeBackbone

    synthesize(tmp_path, n_clips=160, seed=5)  # test accuracy 0.55 (chance 0.14, majority 0.28)
    ds = load_dataset_dir(tmp_path)
    fb = FakeBackbone()
    feats = torch.stack(
        [fb(load_clip(tmp_path / c.path, fb.sampling, fb.preprocess)).flatten() for c in ds.clips]
    )
    y = torch.tensor([c.labels[0] for c in ds.clips])
    train = torch.tensor([c.split == "train" for c in ds.clips])
    mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-6
    x = (feats - mu) / sd
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], len(CLASSES))
    opt = torch.optim.Adam(probe.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[train]), y[train]).backward()
        opt.step()
    acc = (probe(x[~train]).argmax(1) == y[~train]).float().mean().item()
    assert acc > 3 / len(CLASSES), acc


def test_synth_keeps_its_own_dataset_and_refuses_other_folders(tmp_path):
    from stecache.errors import StecacheError

    out = tmp_path / "ds"
    synthesize(out, n_clips=6, seed=0)
    before = (out / "train.txt").read_text(), sorted(p.name for p in (out / "videos").iterdir())
    assert "left as it is" in synthesize(out, n_clips=6, seed=0)
    with pytest.raises(StecacheError, match="--force"):
        synthesize(out, n_clips=4, seed=0)
    assert ((out / "train.txt").read_text(), sorted(p.name for p in (out / "videos").iterdir())) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("important")
    with pytest.raises(StecacheError, match="not empty"):
        synthesize(tmp_path / "mine", n_clips=4)
    synthesize(out, n_clips=4, seed=0, force=True)  # replaced, no stale clips left
    assert len(list((out / "videos").iterdir())) == 4
