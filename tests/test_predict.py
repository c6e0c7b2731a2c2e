"""Tests of stecache.predict and stecache.export on a tiny colour dataset with the real tiny backbone.

A module fixture writes solid-colour clips (red / green / blue + noise), extracts them with
`videomaev2-tiny` and its 15 test views into a float32 cache, and trains a meanFC head on it; prediction
must reproduce the head on the cached views, a long video of colour segments must get the right class
in the right windows, exports must match eager, and bad files must not stop a batch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stecache import predict as P
from stecache import timeline as TL
from stecache.errors import CacheMismatch, CheckpointMismatch
from stecache.synth import write_mp4
from stecache.video import Clip, decode_frames, frame_indices, preprocess_frames

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
FPS = 16


def colour_frames(rgb, t: int, seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 [t, h, w, 3]: one colour plus noise and a moving bright square (so frames differ)."""
    rng = np.random.default_rng(seed)
    x = np.empty((t, h, w, 3), np.float32)
    x[:] = rgb
    for i in range(t):
        x[i, 8:20, (2 * i) % (w - 12) : (2 * i) % (w - 12) + 12] = 250
    x += 12 * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """{root, cache, run, clips}: colour clips -> tiny-backbone cache (15 test views, fp32) -> meanFC run."""
    from stecache.annotations import Dataset
    from stecache.extract import ExtractConfig, extract
    from stecache.train import TrainConfig, train

    root = tmp_path_factory.mktemp("predict")
    (root / "videos").mkdir()
    clips = []
    for k, rgb in enumerate(COLOURS.values()):
        for j, split in enumerate(["train", "train", "train", "val", "test"]):
            rel = f"videos/c{k}_{j}.mp4"
            write_mp4(root / rel, colour_frames(rgb, 24 + 4 * j, seed=10 * k + j), fps=FPS)
            clips.append(Clip(rel, (k,), split, rel))
    clips.sort(key=lambda c: ["train", "val", "test"].index(c.split))
    ds = Dataset(root=root, classes=tuple(COLOURS), clips=tuple(clips), multi_label=False)
    cache = str(root / "cache.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" warning
        cfg = ExtractConfig(test_views=True, dtype="float32", workers=0, progress=False)
        extract(ds, cache, "videomaev2-tiny", cfg=cfg)
    tc = TrainConfig(head="meanfc", epochs=10, batch_size=3, lr=2.0, warmup_epochs=0, balanced=False)
    metrics = train(tc, cache, out_dir=root / "run", progress=False)
    return {"root": root, "cache": cache, "run": root / "run", "clips": clips, "metrics": metrics}


@pytest.fixture(scope="module")
def pred(world):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return P.load_predictor(world["run"])


def test_predictor_reads_the_cache_protocol(pred):
    assert (pred.sampling.num_clips, pred.preprocess.crop) == (5, "three")  # videomaev2 test views: 5 x 3
    assert pred.num_views == 15 and pred.class_names == tuple(COLOURS) and not pred.multi_label


def test_prediction_equals_head_on_cached_views(world, pred):
    """End to end (decode -> backbone -> head -> mean softmax) == head on the cache's stored 15 views."""
    from stecache.cache import open_cache

    cache = open_cache(world["cache"])
    rows = cache.rows("test")
    feats = torch.from_numpy(cache.read_views(rows)).float()  # [N, 15, n, c, h, w]
    assert feats.shape[1] == 15
    with torch.no_grad():
        per_view = torch.stack([pred.head(feats[:, v]).softmax(-1) for v in range(15)], 1)  # [N, 15, K]
    expected = per_view.mean(1).numpy()
    assert per_view.std(1).max() > 1e-4  # views differ, so averaging over the right views matters
    paths = [world["root"] / cache.clip_id[r] for r in rows]
    got = np.stack([r["probs"] for r in P.predict_files(pred, paths, batch_size=2, progress=False)])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert got.argmax(1).tolist() == cache.label_index()[rows].tolist()  # the colours are learnt


class _Logits(torch.nn.Module):
    """Stand-in head: pixels 0-2 of channel 0, frame 0, row 0 are the logits; [M, 3, T, H, W] -> [M, 3]."""

    def forward(self, x):
        return x[:, 0, 0, 0, :3]


def test_probs_average_probabilities_not_logits(pred):
    """mmaction2 average_clip='prob': softmax (sigmoid) per view, then the mean; hand-computed values."""
    views = torch.zeros(1, 2, 3, 1, 1, 3)  # [B=1, V=2, 3, T, H, W=3]
    views[0, 0, 0, 0, 0] = torch.tensor([2.0, 0, 0])
    views[0, 1, 0, 0, 0] = torch.tensor([0, 2.0, 0])
    p = P.Predictor(**{**pred.__dict__, "backbone": torch.nn.Identity(), "head": _Logits()})
    e = np.e**2
    np.testing.assert_allclose(p.probs(views)[0], [(e + 1) / (2 * (e + 2))] * 2 + [1 / (e + 2)], rtol=1e-6)
    ml = P.Predictor(**{**p.__dict__, "multi_label": True})
    s2 = 1 / (1 + np.exp(-2))
    np.testing.assert_allclose(ml.probs(views)[0], [(s2 + 0.5) / 2] * 2 + [0.5], rtol=1e-6)


def test_bad_files_do_not_stop_a_batch(world, pred, tmp_path):
    good = [world["root"] / c.path for c in world["clips"][:2]]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    paths = [good[0], tmp_path / "missing.mp4", tmp_path / "empty.mp4", tmp_path / "text.mp4", good[1]]
    res = P.predict_files(pred, paths, batch_size=4, progress=False)
    assert [r["error"] is None for r in res] == [True, False, False, False, True]
    assert res[1]["error"].startswith("MissingVideo") and res[2]["error"].startswith("CorruptVideo")
    alone = P.predict_files(pred, good, progress=False)
    np.testing.assert_allclose(res[4]["probs"], alone[1]["probs"], atol=1e-6)

    from stecache.cli import cli

    out = CliRunner().invoke(
        cli, ["predict", str(world["run"]), *map(str, paths), "--format", "json", "--workers", "2"]
    )
    assert out.exit_code == 1, out.output
    records = json.loads(out.stdout[: out.stdout.rindex("]") + 1])
    assert [r["error"] is None for r in records] == [True, False, False, False, True]
    assert records[0]["predicted"] == [records[0]["top"][0]["class"]]
    assert "3 of 5 video(s) failed" in out.output


def test_formats_table_json_csv():
    top = [{"class": "x", "score": 0.75}, {"class": "y", "score": 0.25}]
    recs = [
        {"path": "a.mp4", "error": None, "top": top, "predicted": ["x"]},
        {"path": "b.mp4", "error": "CorruptVideo: b.mp4: empty file", "top": [], "predicted": []},
    ]
    table = P.format_rows(recs, "table")
    assert "  1  x       75.00%  *" in table and "FAILED  CorruptVideo" in table
    assert json.loads(P.format_rows(recs, "json")) == recs
    lines = list(csv.reader(io.StringIO(P.format_rows(recs, "csv"))))
    assert lines[1] == ["a.mp4", "1", "x", "0.750000", "1", ""] and lines[3][-1].startswith("CorruptVideo")


def test_multi_label_uses_the_threshold(pred):
    p = P.Predictor(**{**pred.__dict__, "multi_label": True, "threshold": 0.3})
    assert p.predicted(np.array([0.2, 0.31, 0.9])) == [1, 2]
    assert pred.predicted(np.array([0.2, 0.5, 0.3])) == [1]


def test_multi_label_run_reads_tuned_threshold_and_uses_sigmoid(world, pred, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run, ignore=shutil.ignore_patterns("export", "timelines"))
    rec = json.loads((run / "config.json").read_text())
    rec["cache_attrs"]["multi_label"] = True
    (run / "config.json").write_text(json.dumps(rec))
    (run / "metrics.json").write_text(json.dumps({"threshold": 0.37}))
    ml = P.load_predictor(run, backbone=pred.backbone)
    assert ml.multi_label and ml.threshold == 0.37
    views = torch.randn(1, 15, 3, 8, 64, 64)
    expected = torch.sigmoid(pred.logits(views[0])).mean(0)  # mean of per-view sigmoids
    torch.testing.assert_close(ml.probs(views)[0], expected)
    table = P.format_rows(P.rows(ml, [{"path": "v.mp4", "probs": np.array([0.9, 0.1, 0.4]), "error": None}]),
                          "table", True, ml.threshold)  # fmt: skip
    assert "labels: red, blue" in table and "threshold 0.37" in table


def test_windows_hand_computed():
    assert TL.windows(96, 16.0, 1.0, 0.5) == [(s, s + 16) for s in range(0, 81, 8)]
    assert TL.windows(100, 16.0, 1.0, 0.5)[-2:] == [(80, 96), (84, 100)]  # the tail gets a window
    assert TL.windows(10, 16.0, 1.0, 0.5) == [(0, 10)]  # shorter than one window: the whole video


def _rec(spans, tops, stride):
    names = ["a", "b"]
    wins = [{"start": a, "end": b, "top": t, "score": 0.9, "scores": {"a": 0.9 if t == "a" else 0.1,
             "b": 0.1 if t == "a" else 0.9}} for (a, b), t in zip(spans, tops, strict=True)]  # fmt: skip
    return {"path": "v.mp4", "window": spans[0][1] - spans[0][0], "stride": stride, "windows": wins,
            "class_names": names, "multi_label": False, "threshold": 0.5}  # fmt: skip


def test_timeline_segments_do_not_span_unseen_gaps():
    def segments(text):
        return [(ln.split()[0], ln.split()[2], ln.split()[4]) for ln in text.splitlines()[1:]]

    text = TL.format_segments(_rec([(0.0, 2.0), (8.0, 10.0)], ["b", "b"], stride=30.0))  # stride > window
    assert segments(text) == [("0.00", "2.00", "b"), ("8.00", "10.00", "b")]  # was one "0.00 - 10.00 s"
    text = TL.format_segments(_rec([(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)], ["b", "b", "a"], stride=1.0))
    assert segments(text) == [("0.00", "3.00", "b"), ("2.00", "4.00", "a")]  # overlapping windows still merge


def test_timeline_heat_map_cells_sit_under_their_window_centres(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    spans = [(0.0, 3.0), (2.0, 5.0), (4.0, 7.0), (6.0, 9.0), (7.0, 10.0)]  # window 3, stride 2, tail at 7
    TL._plot(_rec(spans, ["a"] * 5, stride=2.0), tmp_path / "t.png")
    mesh = figs[0].axes[0].collections[0]
    xs = mesh.get_coordinates()[0, :, 0]  # cell edges along time
    np.testing.assert_allclose(xs, [0.5, 2.5, 4.5, 6.5, 8.0, 9.0])  # midpoints between centres 1.5 … 8.5
    centres = [(a + b) / 2 for a, b in spans]
    assert all(lo < c < hi for lo, c, hi in zip(xs[:-1], centres, xs[1:], strict=True))


@pytest.fixture(scope="module")
def long_video(world):
    """Three 2-second segments: green, blue, red (classes 1, 2, 0), 96 frames at 16 fps."""
    order = [1, 2, 0]
    rgbs = list(COLOURS.values())
    frames = np.concatenate([colour_frames(rgbs[k], 32, seed=100 + k) for k in order])
    path = world["root"] / "long.mp4"
    write_mp4(path, frames, fps=FPS)
    return path, order


def test_timeline_right_class_in_right_windows(pred, long_video):
    path, order = long_video
    tl = TL.timeline(pred, path, window=1.0, stride=0.5, progress=False)
    assert tl["frames"] == 96 and tl["fps"] == FPS and len(tl["windows"]) == 11
    for w in tl["windows"]:
        a, b = round(w["start"] * FPS), round(w["end"] * FPS)
        if a // 32 == (b - 1) // 32:  # the window lies inside one segment
            assert int(np.argmax(w["probs"])) == order[a // 32], (a, b, w["probs"])
        # independent path: decode exactly this window's sampled frames, preprocess together, predict
        ix = frame_indices(pred.sampling, b - a) + a
        views = preprocess_frames(
            decode_frames(path, ix.reshape(-1)), pred.sampling.num_clips, pred.preprocess
        )
        ref = pred.probs(views[None, : pred.num_views])[0].numpy()
        np.testing.assert_allclose(w["probs"], ref, atol=1e-5)


def test_timeline_cli_writes_csv_json_png(world, long_video, tmp_path):
    from PIL import Image

    from stecache.cli import cli

    path, order = long_video
    out = CliRunner().invoke(
        cli,
        ["predict", str(world["run"]), str(path), "--window", "1", "--stride", "0.5", "--out", str(tmp_path)],
    )
    assert out.exit_code == 0, out.output
    assert "green" in out.stdout and "blue" in out.stdout and "red" in out.stdout
    rows = list(csv.DictReader(open(tmp_path / "long.timeline.csv")))
    assert len(rows) == 11 and rows[0]["top"] == "green" and rows[-1]["top"] == "red"
    assert abs(sum(float(rows[0][c]) for c in COLOURS) - 1) < 1e-4
    rec = json.loads((tmp_path / "long.timeline.json").read_text())
    assert rec["windows"][5]["start"] == 2.5 and rec["class_names"] == list(COLOURS)
    png = Image.open(tmp_path / "long.timeline.png")
    assert png.format == "PNG" and png.info["dpi"][0] == pytest.approx(300, abs=1)  # as every report figure
    inches = (0.3 * len(rows) + 4, 1.2 + 0.35 * len(COLOURS))  # the figure size _plot picks for 11 windows
    assert png.size == pytest.approx((300 * inches[0], 300 * inches[1]), abs=1)


def test_checkpoint_must_match_provenance(pred, tmp_path):
    prov = pred.backbone.provenance()
    with pytest.raises(CheckpointMismatch, match="random"):
        P.load_backbone(prov, checkpoint=tmp_path)
    with pytest.raises(CheckpointMismatch, match="pass --checkpoint"):
        P.load_backbone({**prov, "weights": "ab" * 32})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CacheMismatch, match="config"):
            P.load_backbone({**prov, "config": {**prov["config"], "depth": 3}})
        rebuilt = P.load_backbone(prov)  # random weights are rebuilt from the fixed seed: same features
    x = torch.randn(2, 3, 8, 64, 64)
    assert torch.equal(rebuilt(x), pred.backbone(x))


def test_checkpoint_sha256_is_verified(tmp_path):
    """A run extracted with checkpoint A predicts with A; checkpoint B (other weights) is refused."""
    from transformers import VideoMAEForVideoClassification

    from stecache.backbones import load, videomae

    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        VideoMAEForVideoClassification(videomae.hf_config(videomae.TINY)).eval().save_pretrained(
            tmp_path / name
        )
    prov = load("videomaev2-tiny", checkpoint=tmp_path / "a").provenance()
    assert len(prov["weights"]) == 64
    x = torch.randn(1, 3, 8, 64, 64)
    same = P.load_backbone(prov, checkpoint=tmp_path / "a")
    assert torch.equal(same(x), load("videomaev2-tiny", checkpoint=tmp_path / "a")(x))
    with pytest.raises(CheckpointMismatch, match="sha256"):
        P.load_backbone(prov, checkpoint=tmp_path / "b")


def test_not_a_run(tmp_path):
    with pytest.raises(P.RunError, match="not a trained run"):
        P.load_predictor(tmp_path)


# ---- export ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_only", [False, True])
def test_torchscript_equals_eager_without_stecache(world, pred, tmp_path, head_only):
    from stecache.export import export

    model, meta = export(world["run"], "torchscript", tmp_path / "m", head_only=head_only, pred=pred)
    info = json.loads(meta.read_text())
    assert info["class_names"] == list(COLOURS) and info["preprocess"]["views"]["count"] == 15
    assert info["preprocess"]["crop"]["kind"] == "three" and info["preprocess"]["sampling"]["clip_len"] == 8
    extra = {"preprocess.json": ""}
    torch.jit.load(str(model), _extra_files=extra)
    assert json.loads(extra["preprocess.json"]) == info["preprocess"]  # embedded in the model file too
    x = torch.randn(3, 3, 8, 64, 64)
    if head_only:
        x = pred.backbone(x)
    with torch.no_grad():
        eager = pred.head(x) if head_only else pred.head(pred.backbone(x))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(model)!r})\n"
        f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n"
        "assert not [k for k in sys.modules if k.startswith('stecache')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_only", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_onnx_equals_eager(world, pred, tmp_path, head_only):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from stecache.export import export

    model, meta = export(world["run"], "onnx", tmp_path / "m", head_only=head_only, pred=pred)
    info = json.loads(meta.read_text())
    session = ort.InferenceSession(str(model))
    assert session.get_inputs()[0].name == info["input_name"]
    batch = 1 if isinstance(info["input_shape"][0], int) else 3
    x = torch.randn(batch, 3, 8, 64, 64)
    if head_only:
        x = pred.backbone(x)
    with torch.no_grad():
        eager = pred.head(x) if head_only else pred.head(pred.backbone(x))
    (y,) = session.run(None, {info["input_name"]: x.numpy()})
    np.testing.assert_allclose(y, eager.numpy(), atol=1e-4, rtol=1e-4)
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["preprocess"]) == info["preprocess"] and json.loads(props["stecache"]) == info


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_exported_folder_alone_matches_predict(world, pred, tmp_path, fmt):
    """Copy the export folder anywhere; its preprocess.py + the model file, in an interpreter where stecache
    cannot be imported, give predict's views (1e-6) and probabilities (1e-6)."""
    from stecache.export import export

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    export(world["run"], fmt, tmp_path / "made" / "model", pred=pred)
    folder = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "made", folder)
    videos = [world["root"] / c.path for c in world["clips"] if c.split == "test"]
    code = (
        "import sys, json\n"
        "sys.modules['stecache'] = None  # importing stecache fails here\n"
        f"sys.path.insert(0, {str(folder)!r})\n"
        "import numpy as np\n"
        "from preprocess import classify, load_spec, load_views\n"
        f"videos = {[str(v) for v in videos]!r}\n"
        f"spec = load_spec({str(folder / 'model.json')!r})\n"
        f"np.save('views.npy', np.stack([load_views(v, spec) for v in videos]))\n"
        f"np.save('probs.npy', np.stack([classify(v, {str(folder / 'model.json')!r}) for v in videos]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    views = np.load(tmp_path / "views.npy")
    np.testing.assert_allclose(views, torch.stack([pred.load(v) for v in videos]).numpy(), rtol=0, atol=1e-6)
    want = np.stack([r["probs"] for r in P.predict_files(pred, videos, progress=False)])
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), want, rtol=0, atol=1e-6)
    cli = subprocess.run(
        [sys.executable, "-I", str(folder / "preprocess.py"), str(videos[0]), "--classify"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0 and "views [15, 3, 8, 64, 64]" in cli.stdout, cli.stderr


def test_export_cli(world, tmp_path):
    from stecache.cli import cli

    out = CliRunner().invoke(
        cli, ["export", str(world["run"]), "--head-only", "--out", str(tmp_path / "h.pt")]
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "h.pt").exists() and json.loads((tmp_path / "h.json").read_text())["head_only"]
    bad = CliRunner().invoke(cli, ["export", str(world["run"]), "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_ste_head_with_fused_blocks(tmp_path, fmt):
    """The fused STE block builds its kernel in place each forward; both exports must still match eager."""
    from stecache.export import _onnx, _torchscript
    from stecache.heads import build_head

    torch.manual_seed(0)
    head = build_head("ste", (4, 16, 4, 4), 3, 2).eval()
    x = torch.randn(3, 4, 16, 4, 4)
    with torch.no_grad():
        eager = head(x)
        if fmt == "torchscript":
            got = _torchscript(head, x)(x)
        else:
            ort = pytest.importorskip("onnxruntime")
            fixed = _onnx(head, x, tmp_path / "h.onnx", "features")
            x = x[:1] if fixed else x
            got = torch.from_numpy(
                ort.InferenceSession(str(tmp_path / "h.onnx")).run(None, {"features": x.numpy()})[0]
            )
            eager = eager[: len(x)]
        torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head(x), eager)  # the eager head is left as it was


def test_timeline_files_skip_a_bad_video_and_keep_the_rest(pred, long_video, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    results = list(TL.timeline_files(pred, [bad, long_video[0]], 1.0, 0.5, tmp_path / "out"))
    assert results[0]["record"] is None and "CorruptVideo" in results[0]["error"]
    assert results[1]["error"] is None and len(results[1]["record"]["windows"]) == 11
    assert all(f.exists() for f in results[1]["files"])
    csv_text = TL.timelines_csv([results[1]["record"], results[1]["record"]])
    assert csv_text.count("path,start,end") == 1 and len(csv_text.splitlines()) == 1 + 2 * 11


def test_timeline_files_of_videos_with_one_stem_do_not_overwrite_each_other(tmp_path, monkeypatch):
    from types import SimpleNamespace

    fake = {"fps": 10.0, "frames": 20, "window": 2.0, "stride": 2.0,
            "windows": [{"start": 0.0, "end": 2.0, "probs": [0.7, 0.3]}]}  # fmt: skip
    monkeypatch.setattr(TL, "timeline", lambda pred, path, window, stride: {**fake, "path": str(path)})
    pred = SimpleNamespace(class_names=["a", "b"], multi_label=False, threshold=0.5)
    paths = ["v/test.mp4", "v/test.avi", "w/test.avi"]  # mmaction2's tests/data has test.mp4 and test.avi
    results = list(TL.timeline_files(pred, paths, 2.0, 2.0, tmp_path))
    names = [r["files"][0].name for r in results]
    assert names == ["test.timeline.json", "test.avi.timeline.json", "test-3.timeline.json"]
    assert [json.loads((tmp_path / n).read_text())["path"] for n in names] == paths


RANDOM_WEIGHTS = "stecache: warning: backbone 'videomaev2-tiny' has RANDOM weights"


@pytest.mark.parametrize(
    "args, backbone_warning",
    [
        (["export", "RUN", "--head-only"], False),
        pytest.param(["export", "RUN", "--head-only", "--format", "onnx"], False, marks=pytest.mark.slow),
        (["export", "RUN"], True),
        pytest.param(["export", "RUN", "--format", "onnx"], True, marks=pytest.mark.slow),
        (["predict", "RUN", "VIDEO"], True),
    ],
)
def test_no_third_party_chatter_on_stderr(world, tmp_path, args, backbone_warning):
    """The real command in a fresh process: stderr holds at most the warning about the user's own model
    (random backbone weights), and nothing about backbone weights with --head-only."""
    if "onnx" in args:
        pytest.importorskip("onnxruntime")
    video = next(world["root"] / c.path for c in world["clips"] if c.split == "test")
    args = [str(world["run"]) if a == "RUN" else str(video) if a == "VIDEO" else a for a in args]
    if args[0] == "export":
        args += ["--out", str(tmp_path / "m")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", "from stecache.cli import cli; cli()", *args],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == int(backbone_warning), proc.stderr
    assert all(ln.startswith(RANDOM_WEIGHTS) for ln in lines), proc.stderr
