"""bench/gpu.py on CPU (small sizes, gloo, no autocast) so the GPU script cannot rot, and the GPU-path
pieces it relies on that CPU can prove: GPU-resident training equals host training bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bench.common
from bench import gpu
from stecache import data as D
from stecache import train as T
from stecache.errors import StecacheError

FAST = ["--device", "cpu", "--budget", "400", "--set", "check_clips=1", "extract_clips=4", "distinct=4"]


def _ok(stage: dict) -> list[bool]:
    return [v["ok"] for v in stage.values() if isinstance(v, dict) and "ok" in v]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def test_gpu_script_runs_on_cpu(tmp_path, monkeypatch, synth_dir):
    stages = ["--only", "backbones", "heads", "extract", "train"]
    assert gpu.main([*FAST, "--out", str(tmp_path), "--synth", str(synth_dir), *stages]) == 0
    res = json.loads((tmp_path / "gpu.json").read_text())
    st = res["stages"]
    assert set(st) == {"backbones", "heads", "extract", "train"} and res["device"] == "cpu"
    assert all(_ok(st["backbones"])) and st["backbones"]["videomaev2-tiny"]["max_abs"] == 0  # no autocast
    heads = _ok(st["heads"])
    from stecache.heads import HEADS

    assert len(heads) == len(HEADS) + 2 and all(heads)  # every head + fused vs literal twice
    assert st["heads"]["ste d1 fused vs literal, fp32"]["logits_rel"] < 1e-5
    assert st["extract"]["stecache_clips_s"] > 0 and st["extract"]["batch"]["batch_size"] >= 1
    runs = st["train"]["runs"]
    assert set(runs) == {"ste d1 ram", "ste d1 stream", "ste d1 resident"}
    assert all(0 <= r["data_wait_share"] <= 1 and r["gflop_per_clip"] > 0 for r in runs.values())
    md = (tmp_path / "gpu.md").read_text()
    assert "| ste d1 | resident |" in md and "fused vs literal" in md and "**Extraction**" in md
    # --merge writes the section into BENCHMARKS.md (here a copy)
    monkeypatch.setattr(bench.common, "BENCHMARKS", tmp_path / "B.md")
    assert gpu.main(["--merge", str(tmp_path / "gpu.json")]) == 0
    assert gpu.TITLE in (tmp_path / "B.md").read_text()


def test_budget_runs_out_cleanly(tmp_path):
    assert gpu.main(["--device", "cpu", "--budget", "0", "--out", str(tmp_path)]) == 0
    st = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    assert set(st) == set(gpu.NEEDS) and all("time budget" in v["skipped"] for v in st.values())
    assert "time budget" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow  # four CLI processes (two under torchrun) and the sweep: ~1-3 min on this machine
def test_gpu_script_distributed_and_sweep_on_cpu(tmp_path, synth_dir):
    stages = ["--only", "dist_extract", "dist_train", "sweep"]
    assert gpu.main([*FAST, "--out", str(tmp_path), "--synth", str(synth_dir), *stages]) == 0
    st = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    assert st["dist_extract"]["ok"] and st["dist_extract"]["bit_equal"]
    assert st["dist_train"]["ok"] and st["dist_train"]["weights_max_abs"] <= 1e-4
    assert st["sweep"]["heads"] == 8 and st["sweep"]["one_pass_s"] > 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("gpu") / "toy.zarr")
    D.toy_cache(url, n_clips=80, num_views=2, signal=1.5)
    return url


def test_resident_training_equals_host_training(toy, tmp_path):
    """`--resident on` (features moved to the device once, batches gathered there) changes nothing."""
    cfg = T.TrainConfig(head="stemean", depth=1, epochs=2, batch_size=8, lr=0.05)  # dropout: RNG in play
    T.train(cfg, toy, tmp_path / "host", progress=False, resident="off")
    T.train(cfg, toy, tmp_path / "resident", progress=False, resident="on")
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("host", "resident"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = ((tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("host", "resident"))
    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]


def test_make_resident_modes(toy):
    from stecache.cache import open_cache

    cache = open_cache(toy)
    split = D.load_split(cache, "train", views="all")
    host = split.features.copy()
    with pytest.raises(StecacheError, match="--resident 'gpu'"):
        D.make_resident(split, "cpu", "gpu")
    assert not D.make_resident(split, "cpu", "auto")  # auto: CUDA only
    assert D.make_resident(split, "cpu", "on") and isinstance(split.features, torch.Tensor)
    order, views = np.arange(len(split))[::-1].copy(), np.arange(len(split)) % 2
    got = list(D.batches(split, order, 7, views))  # 7 does not divide the split: a short last batch
    assert all(isinstance(x, torch.Tensor) for _, x in got)
    want = np.concatenate([host[p, views[p]][:, None] for p, _ in got])
    np.testing.assert_array_equal(np.concatenate([x.numpy() for _, x in got]), want)
    streamed = D.load_split(cache, "train", limit="1K")
    with pytest.raises(StecacheError, match="streamed"):
        D.make_resident(streamed, "cpu", "on")
    assert torch.equal(D.to_tensor(got[0][1], "cpu"), torch.from_numpy(want[:7]).float())
