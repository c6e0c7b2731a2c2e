"""sweep.py: one pass over the cache == separate train runs; memory grouping; resume; grid expansion."""

from __future__ import annotations

import json
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stecache import sweep
from stecache import train as T
from stecache.cache import create_cache

Clip = namedtuple("Clip", "clip_id labels split")
SHAPE = (4, 8, 2, 2)  # n, c, h, w


def make_cache(path, multi_label=False, n=72, k=3, seed=0):
    """A small cache whose features carry the class in a few channels (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    labels = [(int(i % k),) if not multi_label else tuple(sorted({i % k, (i * 7) % k})) for i in range(n)]
    clips = [Clip(f"c{i}", labels[i], splits[i]) for i in range(n)]
    prov = {"backbone": {"name": "fake"}, "dataset": "toy-multi" if multi_label else "toy"}
    names = [f"k{j}" for j in range(k)]
    cache = create_cache(str(path), clips=clips, class_names=names, multi_label=multi_label,
                         feature_shape=SHAPE, num_views=1, provenance=prov, shard_size=16)  # fmt: skip
    feats = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    for i, lab in enumerate(labels):
        for j in lab:
            feats[i, :, j] += 0.8  # class j lifts channel j everywhere
    for a, b in cache.shards():
        cache.write_shard(a, feats[a:b], None, np.ones(b - a, bool), [""] * (b - a))
    return str(path)


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache") / "toy.zarr")


BASE = {"epochs": 3, "batch_size": 8, "lr": 0.02}


def _records(out):
    return {r["run"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "log.jsonl").read_text().splitlines()]


def test_one_pass_equals_separate_train_runs(cache_url, tmp_path):
    jobs = sweep.plan([cache_url], heads="meanfc,tr:1,ste:1,stemean:1", seeds=[0], base=BASE)
    jobs += sweep.plan([cache_url], heads="ste:1", seeds=[1], base=BASE)  # a second data key
    assert len(jobs) == 5
    sweep.run_sweep(jobs, tmp_path / "sweep", progress=False, echo=lambda s: None)
    for j in jobs:
        T.train(j.cfg, cache_url, runs_root=tmp_path / "alone", progress=False)
    a, b = _records(tmp_path / "sweep"), _records(tmp_path / "alone")
    assert a.keys() == b.keys() and len(a) == 5
    for run, ra in a.items():
        rb = b[run]
        assert ra["best_epoch"] == rb["best_epoch"]
        for split in ("val", "test"):
            for k, v in rb[split].items():
                assert ra[split][k] == pytest.approx(v, abs=1e-6), (run, split, k)
        wa = load_file(str(tmp_path / "sweep" / run / "best.safetensors"))
        wb = load_file(str(tmp_path / "alone" / run / "best.safetensors"))
        for k in wb:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            _losses(tmp_path / "sweep" / run), _losses(tmp_path / "alone" / run), rtol=1e-6
        )
    # the heads really differ (the test would not notice a sweep that trained one head K times)
    losses = {_losses(tmp_path / "sweep" / run)[0] for run in a}
    assert len(losses) == 5


def test_one_pass_of_the_probes_equals_separate_runs(tmp_path):
    """linear (BatchNorm running stats), attentive, vjepa2 and ep trained side by side == alone."""
    url = make_cache(tmp_path / "c16.zarr", multi_label=True, n=48)
    jobs = sweep.plan([url], heads="linear,attentive:2,vjepa2,ep", seeds=[0], base=BASE)
    sweep.run_sweep(jobs, tmp_path / "sweep", progress=False, echo=lambda s: None)
    for j in jobs:
        T.train(j.cfg, url, runs_root=tmp_path / "alone", progress=False)
    a, b = _records(tmp_path / "sweep"), _records(tmp_path / "alone")
    assert a.keys() == b.keys() and len(a) == 4
    for run, ra in a.items():
        assert ra["best_epoch"] == b[run]["best_epoch"]
        assert ra["test"] == pytest.approx(b[run]["test"], abs=1e-6, nan_ok=True), run
        wa = load_file(str(tmp_path / "sweep" / run / "best.safetensors"))
        wb = load_file(str(tmp_path / "alone" / run / "best.safetensors"))
        assert wa.keys() == wb.keys()
        assert any("running_mean" in k for k in wa) == (ra["head"] in ("linear", "ep"))  # BN stats saved
        for k in wb:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_a_pass_reads_each_heads_loss_back_once_an_epoch_not_every_step(cache_url, tmp_path, monkeypatch):
    """The loss sums stay on the device: stecache calls Tensor.item() (a host-device sync on CUDA) once per
    head and epoch while a pass trains, not once per step (here 3 epochs x 5 steps x 2 heads = 30 calls);
    the logged losses stay bit-identical to train.train's."""
    here, real, calls, inside = str(Path(sweep.__file__).parent), torch.Tensor.item, [], [False]

    def item(t):
        if inside[0] and sys._getframe(1).f_code.co_filename.startswith(here):  # not AdamW's own reads
            calls.append(sys._getframe(1).f_code.co_name)
        return real(t)

    def train_group(*a, **k):
        inside[0] = True
        try:
            return real_group(*a, **k)
        finally:
            inside[0] = False

    real_group = sweep.train_group
    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(sweep, "train_group", train_group)
    jobs = sweep.plan([cache_url], heads="meanfc,stemean:1", seeds=[0], base=BASE)
    sweep.run_sweep(jobs, tmp_path / "sweep", progress=False, echo=lambda s: None)
    assert calls == ["epoch_loss"] * (BASE["epochs"] * len(jobs))
    monkeypatch.undo()
    alone = T.train(jobs[0].cfg, cache_url, runs_root=tmp_path / "alone", progress=False)
    name = Path(alone["run_dir"]).name
    assert _losses(tmp_path / "sweep" / name) == _losses(tmp_path / "alone" / name)  # exact, not approx


def test_run_names_say_cache_head_depth_swept_values_seed(cache_url, tmp_path):
    jobs = sweep.plan([cache_url], heads="ste:1", seeds=[2], base=BASE, grid={"lr": [0.02, 0.05]})
    names = [T.run_name(j.cfg, _cache(cache_url)) for j in jobs]
    assert names[0].startswith("fake-toy-ste-d1-bs8-ep3-lr0.02-s2-") and "lr0.05-s2" in names[1]
    cfg = T.TrainConfig(head="tr", depth=1, head_options={"pos": "none"})
    assert T.run_name(cfg, _cache(cache_url)).startswith("fake-toy-tr-d1-posnone-s0-")


def test_finished_runs_drop_resume_state_and_log_tensorboard(cache_url, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jobs = sweep.plan([cache_url], heads="meanfc,linear", seeds=[0], base=BASE)
    sweep.run_sweep(jobs, tmp_path / "a", progress=False, echo=lambda s: None)
    sweep.run_sweep(jobs, tmp_path / "b", progress=False, echo=lambda s: None, keep_checkpoints=True)
    for run in _records(tmp_path / "a"):
        a, b = tmp_path / "a" / run / T.RESUME_FILE, tmp_path / "b" / run / T.RESUME_FILE
        assert not a.exists() and b.exists()
        assert (tmp_path / "a" / run / "best.safetensors").exists()
        ev = EventAccumulator(str(tmp_path / "a" / run))
        ev.Reload()
        loss = [e.value for e in ev.Scalars("train/loss")]
        log = [json.loads(x) for x in (tmp_path / "a" / run / "log.jsonl").read_text().splitlines()]
        assert loss == pytest.approx([e["loss"] for e in log]) and len(loss) == BASE["epochs"]
        assert [e.value for e in ev.Scalars("val/acc1")] == pytest.approx([e["val"]["acc1"] for e in log])


def test_multilabel_selection_on_map_and_degenerate_runs_flagged(tmp_path):
    """The best epoch is the val-mAP argmax (threshold-free); a head at a tiny lr barely moves from its init
    (every clip gets the same labels) and is flagged in its record and on the console."""
    url = make_cache(tmp_path / "m.zarr", multi_label=True, n=48)
    jobs = sweep.plan([url], heads="patch", seeds=[0], base=BASE | {"epochs": 4}, grid={"lr": [1e-6, 0.02]})
    lines = []
    sweep.run_sweep(jobs, tmp_path / "r", progress=False, echo=lines.append)
    recs = sorted(_records(tmp_path / "r").values(), key=lambda r: r["config"]["lr"])
    for rec in recs:
        log = [json.loads(x) for x in (tmp_path / "r" / rec["run"] / "log.jsonl").read_text().splitlines()]
        assert rec["best_epoch"] == 1 + int(np.argmax([e["val"]["mAP"] for e in log]))
        assert "macro_f1" in rec["test"] and "test_tuned" in rec  # F1@0.5 beside the val-tuned one
    assert len({e["val"]["mAP"] for e in log}) > 1  # the learning run's mAP moves: a real choice
    assert json.loads((tmp_path / "r" / rec["run"] / "metrics.json").read_text())["main_metric"] == "mAP"
    assert recs[0]["degenerate"].startswith("the same labels for every clip") and recs[1]["degenerate"] == ""
    assert sum("DEGENERATE: the same labels" in s for s in lines) == 1


def test_memory_cap_changes_grouping_not_results(cache_url, tmp_path):
    jobs = sweep.plan([cache_url], heads="meanfc,ste:0-2", seeds=[0], base=BASE)
    lines_a, lines_b = [], []
    sweep.run_sweep(jobs, tmp_path / "a", progress=False, echo=lines_a.append)
    sweep.run_sweep(jobs, tmp_path / "b", memory="1K", progress=False, echo=lines_b.append)
    assert any("4 heads in 1 pass(es)" in s for s in lines_a)
    assert any("4 heads in 4 pass(es)" in s for s in lines_b)
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert a.keys() == b.keys()
    for run in a:
        assert a[run]["test"] == pytest.approx(b[run]["test"], abs=1e-6)
        assert a[run]["val"] == pytest.approx(b[run]["val"], abs=1e-6)


def test_group_by_memory_packs_under_the_cap():
    sizes = [(100, 50), (60, 10), (30, 200), (10, 10)]
    groups = sweep.group_by_memory(sizes, 260)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    for g in groups:
        assert len(g) == 1 or sum(sizes[i][0] for i in g) + max(sizes[i][1] for i in g) <= 260
    assert sweep.group_by_memory(sizes, 10**9) == [[0, 1, 2, 3]]
    assert len(sweep.group_by_memory(sizes, 1)) == 4


def test_killed_sweep_resumes_without_redoing_finished_runs(cache_url, tmp_path, monkeypatch):
    jobs = sweep.plan([cache_url], heads="meanfc,ste:1,tr:1", seeds=[0], base=BASE)
    sweep.run_sweep(jobs, tmp_path / "ref", progress=False, echo=lambda s: None)
    out = tmp_path / "killed"
    calls = {"n": 0}
    real_checkpoint, real_make = T.save_epoch, sweep.make_run

    def dying_checkpoint(*args):  # killed in the 2nd pass (one head per pass), after its first epoch
        real_checkpoint(*args)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_epoch", dying_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(jobs, out, memory="1K", progress=False, echo=lambda s: None)
    first = _records(out)
    assert len(first) == 1
    done_run = next(iter(first))
    stamp = (out / done_run / "metrics.json").stat().st_mtime_ns
    monkeypatch.setattr(T, "save_epoch", real_checkpoint)
    built = []
    monkeypatch.setattr(sweep, "make_run", lambda cfg, *a: built.append(cfg) or real_make(cfg, *a))
    lines = []
    sweep.run_sweep(jobs, out, memory="1K", progress=False, echo=lines.append)
    assert "1 already in" in lines[0]
    assert len(built) == 2 and all(T.run_name(c, _cache(cache_url)) != done_run for c in built)
    assert any("from epoch 2" in s for s in lines)  # the interrupted head resumed from its resume checkpoint
    assert (out / done_run / "metrics.json").stat().st_mtime_ns == stamp
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3  # every run recorded exactly once
    ref, got = _records(tmp_path / "ref"), _records(out)
    for run in ref:
        assert got[run]["test"] == pytest.approx(ref[run]["test"], abs=1e-6)
    # a third call does nothing
    sweep.run_sweep(jobs, out, progress=False, echo=lines.append)
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def _cache(url):
    from stecache.cache import open_cache

    return open_cache(url)


def test_multi_label_one_pass_equals_separate(tmp_path):
    url = make_cache(tmp_path / "ml.zarr", multi_label=True)
    jobs = sweep.plan([url], heads="meanfc,ste:1", seeds=[3], base=BASE)
    sweep.run_sweep(jobs, tmp_path / "s", progress=False, echo=lambda s: None)
    for j in jobs:
        T.train(j.cfg, url, runs_root=tmp_path / "t", progress=False)
    a, b = _records(tmp_path / "s"), _records(tmp_path / "t")
    for run in b:
        assert a[run]["test"] == pytest.approx(b[run]["test"], abs=1e-6)
        assert a[run]["test_tuned"] == pytest.approx(b[run]["test_tuned"], abs=1e-6)


def test_plan_tables_and_grid():
    jobs = sweep.plan(["a", "b"], tables="I,II,III", seeds=[0, 1, 2])
    first = {(j.cfg.head, j.cfg.depth) for j in jobs if j.cache == "a"}
    second = {(j.cfg.head, j.cfg.depth) for j in jobs if j.cache == "b"}
    assert first == {("meanfc", 0), ("tr", 1), ("stemean", 1)} | {("ste", d) for d in range(5)}
    assert second == {("meanfc", 0), ("tr", 1), ("ste", 1)}
    assert len(jobs) == 3 * (8 + 3)
    jobs = sweep.plan(["a"], heads="ste:1", seeds=[0], grid={"lr": [1e-3, 3e-3], "epochs": [2, 4]})
    assert sorted((j.cfg.lr, j.cfg.epochs) for j in jobs) == [(1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4)]
    assert len({sweep.data_key(j.cfg) for j in jobs}) == 2  # lr is head-side, epochs is not
    with pytest.raises(sweep.SweepError, match="--set \\['lrr'\\]"):
        sweep.plan(["a"], heads="ste", grid={"lrr": [1]})
    with pytest.raises(sweep.SweepError, match="known tables"):
        sweep.plan(["a"], tables="IV")
    with pytest.raises(sweep.SweepError, match="NAME:LO-HI"):
        sweep.parse_heads("ste:x")
    assert sweep.parse_heads("meanfc,ste:0-2") == [("meanfc", None), ("ste", 0), ("ste", 1), ("ste", 2)]


def test_estimate_bytes_grows_with_depth_and_batch():
    cfg = T.TrainConfig(head="ste", depth=1, batch_size=8)
    p1, t1 = sweep.estimate_bytes(cfg, SHAPE, 3)
    p2, t2 = sweep.estimate_bytes(cfg.replace(depth=2), SHAPE, 3)
    _, t3 = sweep.estimate_bytes(cfg.replace(batch_size=16), SHAPE, 3)
    assert p2 > p1 and t2 > t1 and t3 > t1
    from stecache.heads import build_head

    params = sum(p.numel() for p in build_head("ste", SHAPE, 3, 1).parameters())
    assert p1 == 3 * 4 * params


def test_cli_ablate_and_report(cache_url, tmp_path):
    from click.testing import CliRunner

    from stecache.cli import cli

    out = tmp_path / "runs"
    args = [
        "ablate",
        cache_url,
        "--heads",
        "meanfc,ste:0,ste:1",
        "--seeds",
        "0,1",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(cli, args + ["--set", "lr=0.01,0.02"])
    assert res.exit_code == 0, res.output
    assert f"cache {cache_url}: 12 runs" in res.output  # ablate says which cache it uses
    page = (out / "report" / "report.html").read_text()  # per-class metrics and confusion from the runs
    assert page.count("test confusion matrix") == 12 and "<th>acc</th>" in page and "&quot;lr&quot;" in page
    assert "12 runs, 0 already" in res.output and "in 1 pass(es)" in res.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 12
    res = CliRunner().invoke(cli, ["report", str(out / "results.jsonl"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "Table II" in res.output and (tmp_path / "rep" / "table_ii.csv").exists()
    assert "of 2 settings" in res.output  # lr chosen on val, said in the table's note
    bad = CliRunner().invoke(cli, ["ablate", cache_url, "--tables", "IV", "--out", str(out)])
    assert bad.exit_code == 1 and "known tables are I, I+, II, III" in bad.output
    bad = CliRunner().invoke(cli, ["report", str(tmp_path / "nope.jsonl")])
    assert bad.exit_code == 1 and "no such results file" in bad.output


def test_seeds_share_one_pass_with_a_fixed_data_seed(cache_url, tmp_path):
    """With data_seed fixed, the seeds differ only in head init/dropout and train in one pass."""
    jobs = sweep.plan([cache_url], heads="meanfc,ste:1", seeds=[0, 1], base=BASE | {"data_seed": 7})
    lines: list[str] = []
    sweep.run_sweep(jobs, tmp_path / "sweep", progress=False, echo=lines.append)
    assert sum("heads in 1 pass(es)" in s for s in lines) == 1 and any("4 heads" in s for s in lines)
    for j in jobs:
        T.train(j.cfg, cache_url, runs_root=tmp_path / "alone", progress=False)
    a, b = _records(tmp_path / "sweep"), _records(tmp_path / "alone")
    assert a.keys() == b.keys() and len(a) == 4
    for run in a:
        assert a[run]["test"] == pytest.approx(b[run]["test"], abs=1e-6), run
    assert len({a[run]["val"]["acc1"] for run in a} | {_losses(tmp_path / "sweep" / r)[0] for r in a}) > 2
