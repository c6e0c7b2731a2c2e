"""The exported folder's preprocess.py (numpy + PyAV, no stecache) against stecache.video.load_clip.

Every case is a real mp4 written here; the reference file runs in a clean interpreter (`python -I`, no
PYTHONPATH) where importing stecache or torch fails, so it can only pass by reproducing the numbers from
the JSON spec. End-to-end parity with `stecache predict` (views and probabilities, TorchScript and
ONNX) is in tests/test_predict.py, which has a trained run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import stecache
from stecache.export import preprocess_spec
from stecache.synth import write_mp4
from stecache.video import Preprocess, Sampling, load_clip

REFERENCE = Path(stecache.__file__).with_name("standalone_preprocess.py")

# (frames, height, width), Sampling, Preprocess, views kept
CASES = {
    "dense-three-downscale-landscape": (
        (40, 48, 64),
        Sampling(rule="dense", clip_len=4, frame_interval=2, num_clips=3),
        Preprocess(short_side=40, crop_size=32, crop="three"),
        9,
    ),
    "uniform-center-upscale-portrait": (
        (23, 30, 20),
        Sampling(rule="uniform", clip_len=8, num_clips=2),
        Preprocess(
            short_side=64, crop_size=56, crop="center", mean=(0.45 * 255,) * 3, std=(0.225 * 255,) * 3
        ),
        2,
    ),
    "dense-wraps-short-video-squash": (
        (5, 26, 34),
        Sampling(rule="dense", clip_len=8, frame_interval=4, num_clips=1),
        Preprocess(short_side=32, crop_size=32, crop="resize"),
        1,
    ),
    "dense-clip-len-1": (
        (17, 24, 24),
        Sampling(rule="dense", clip_len=1, frame_interval=1, num_clips=3),
        Preprocess(short_side=24, crop_size=16, crop="three"),
        3,
    ),
    "uniform-three-portrait-no-resize-first-view": (
        (31, 26, 18),
        Sampling(rule="uniform", clip_len=4, num_clips=3),
        Preprocess(short_side=18, crop_size=15, crop="three"),
        1,
    ),
}


def clean_env() -> dict:
    """The environment without anything that would put stecache on the path."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def run_isolated(folder: Path, code: str) -> subprocess.CompletedProcess:
    """Run `code` in `folder` with the venv's python in isolated mode; stecache and torch cannot import."""
    prelude = (
        "import sys\n"
        "sys.modules['stecache'] = None; sys.modules['torch'] = None  # any import of them fails\n"
        f"sys.path.insert(0, {str(folder)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", prelude + code],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_reference_preprocess_script_reports_a_bad_video_in_one_line(tmp_path, capsys):
    from stecache.standalone_preprocess import main

    sampling, pre = Sampling(rule="uniform", clip_len=4), Preprocess(short_side=32, crop_size=32)
    spec = preprocess_spec(SimpleNamespace(sampling=sampling, preprocess=pre, num_views=1))
    (tmp_path / "model.json").write_text(json.dumps({"preprocess": spec}))
    (tmp_path / "notes.txt").write_text("not a video")
    for video in (tmp_path / "missing.mp4", tmp_path / "notes.txt"):  # were PyAV tracebacks
        assert main([str(video), "--spec", str(tmp_path / "model.json")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{video}: cannot read it" in err


def test_reference_preprocess_matches_load_clip_in_a_clean_interpreter(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copyfile(REFERENCE, folder / "preprocess.py")
    rng = np.random.default_rng(0)
    expected = {}
    for name, ((t, h, w), sampling, pre, views) in CASES.items():
        frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
        frames[:, h // 3 : h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :, None]  # edges
        write_mp4(tmp_path / f"{name}.mp4", frames, fps=10)
        spec = preprocess_spec(SimpleNamespace(sampling=sampling, preprocess=pre, num_views=views))
        (tmp_path / f"{name}.json").write_text(json.dumps({"preprocess": spec}))
        expected[name] = load_clip(tmp_path / f"{name}.mp4", sampling, pre)[:views].numpy()
    code = (
        "import numpy as np\nfrom preprocess import load_spec, load_views\n"
        f"for name in {list(CASES)!r}:\n"
        f"    base = {str(tmp_path)!r} + '/' + name\n"
        "    np.save(base + '.npy', load_views(base + '.mp4', load_spec(base + '.json')))\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = run_isolated(folder, code)
    assert proc.returncode == 0, proc.stderr
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}.npy")
        assert got.shape == want.shape and got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
        print(f"{name}: max |reference - load_clip| = {np.abs(got - want).max():.2e}")


def test_the_clean_interpreter_really_cannot_import_stecache(tmp_path):
    """The isolation the test above relies on: `import stecache` fails there."""
    proc = run_isolated(tmp_path, "import stecache\n")
    assert proc.returncode != 0 and "stecache" in proc.stderr


def test_resize_is_torch_bilinear_without_antialias():
    """The numpy resize against torch.nn.functional.interpolate on odd up- and down-scales."""
    from stecache.standalone_preprocess import resize_bilinear

    x = np.random.default_rng(1).integers(0, 256, (2, 13, 29, 3)).astype(np.float32)
    for size in [(7, 11), (40, 90), (13, 29), (224, 100)]:
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
        np.testing.assert_allclose(resize_bilinear(x, size), want.numpy(), rtol=0, atol=4 * 2**-16)  # 4 ulp


def test_spec_is_json_and_names_the_rule_and_its_parameters():
    s = Sampling(rule="dense", clip_len=16, frame_interval=4, num_clips=5)
    spec = preprocess_spec(SimpleNamespace(sampling=s, preprocess=Preprocess(crop="three"), num_views=15))
    assert json.loads(json.dumps(spec)) == spec
    want = {"rule": "dense", "clip_len": 16, "frame_interval": 4, "num_clips": 5, "test_mode": True}
    assert spec["sampling"] == spec["sampling"] | want
    assert (
        spec["sampling"]["mmaction2"]
        == "SampleFrames(clip_len=16, frame_interval=4, num_clips=5, test_mode=True)"
    )
    assert spec["resize"] == spec["resize"] | {"mode": "short_side", "short_side": 224}
    assert spec["crop"]["kind"] == "three" and spec["crop"]["size"] == 224
    assert spec["normalize"]["mean"] == [123.675, 116.28, 103.53]
    assert spec["views"] == spec["views"] | {"count": 15, "clips": 5, "crops": 3}
