"""report.py: tables derive from results.jsonl only; mean ± std, selection on val, bold rule, corrcoef."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from stecache import report


def _rec(head, depth, seed, test, val=None, *, backbone="vmae", dataset="synth", multi=False, lr=1e-3):
    metric, tuned = {"acc1": test}, None
    if multi:  # headline F1 at the val-tuned threshold = test; F1@0.5 = test - 0.2; mAP = test + 0.05
        tuned = {
            "macro_f1": test,
            "macro_recall": test - 0.1,
            "macro_precision": test + 0.1,
            "threshold": 0.3,
        }
        metric = {"macro_f1": test - 0.2, "mAP": test + 0.05}
    vmetric = {k: (val if val is not None else v) for k, v in metric.items()}
    rec = {
        "run": f"{head}{depth}-{seed}-{lr}",
        "head": head,
        "depth": depth,
        "seed": seed,
        "cache_fingerprint": f"{backbone}/{dataset}",
        "backbone": backbone,
        "dataset": dataset,
        "multi_label": multi,
        "config": {"head": head, "depth": depth, "seed": seed, "lr": lr},
        "val": vmetric,
        "test": metric,
    }
    if tuned:
        rec["test_tuned"] = tuned
    return rec


def _write(tmp_path, recs):
    p = tmp_path / "results.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _full(multi=False, backbones=("vmae",)):
    recs = []
    for bb in backbones:
        for s in range(3):
            recs += [_rec("meanfc", 0, s, 0.50 + 0.01 * s, backbone=bb, multi=multi)]
            recs += [_rec("tr", 1, s, 0.55 + 0.01 * s, backbone=bb, multi=multi)]
            recs += [_rec("stemean", 1, s, 0.56 + 0.01 * s, backbone=bb, multi=multi)]
            for d in range(5):
                recs += [_rec("ste", d, s, 0.60 + 0.1 * (d == 1) + 0.01 * s, backbone=bb, multi=multi)]
    return recs


def test_cell_is_mean_and_sample_std_over_seeds(tmp_path):
    ts = report.tables(_full())
    t1 = ts[0]
    assert t1.title.startswith("Table I")
    assert t1.rows == ["vmae + meanFC", "vmae + Tr_head d1", "vmae + STE_head d1"]
    c = t1.cells[0][0]
    assert c.n == 3
    assert c.mean == pytest.approx(0.51)
    assert c.std == pytest.approx(np.std([0.50, 0.51, 0.52], ddof=1))
    assert c.fmt() == "51.00 ± 1.00"


def test_change_a_result_changes_the_table(tmp_path):
    recs = _full()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    md1 = report.write_report(_write(tmp_path / "a", recs), tmp_path / "ra")
    recs[0]["test"]["acc1"] = 0.80  # meanfc seed 0
    md2 = report.write_report(_write(tmp_path / "b", recs), tmp_path / "rb")
    t1, t2 = md1.read_text(), md2.read_text()
    assert "51.00 ± 1.00" in t1 and "51.00 ± 1.00" not in t2
    mean = np.mean([0.80, 0.51, 0.52])
    assert f"{100 * mean:.2f} ± {100 * np.std([0.80, 0.51, 0.52], ddof=1):.2f}" in t2
    rows = list(csv.DictReader(open(tmp_path / "rb" / "table_i.csv")))
    meanfc = [r for r in rows if r["row"] == "vmae + meanFC"][0]
    assert float(meanfc["mean"]) == pytest.approx(mean)
    assert (tmp_path / "rb" / "table_i.png").stat().st_size > 1000
    assert (tmp_path / "rb" / "table_iii_depth.png").exists()


def test_tables_ii_iii_multi_label_columns(tmp_path):
    ts = report.tables(_full(multi=True))
    names = [t.title.split(" (")[0] for t in ts]
    assert names == ["Table I: classifier heads × backbones", "Table II: STEb and patch_base_classifier",
                     "Table III: STE_head depth"]  # fmt: skip
    t2, t3 = ts[1], ts[2]
    assert t2.cols == ["F1", "F1@0.5", "mAP", "recall", "precision"]  # F1 at the val-tuned threshold leads
    # patch_base_classifier row falls back to ste depth 0 when no "patch" runs exist
    assert t2.cells[1][0].mean == pytest.approx(t3.cells[0][0].mean)
    assert t3.cells[1][0].mean == pytest.approx(0.71)  # val-tuned F1
    assert t3.cells[1][1].mean == pytest.approx(0.51)  # F1@0.5 beside it
    assert t3.cells[1][4].mean == pytest.approx(0.71 + 0.1)  # precision = f1 + 0.1 in the fixture
    assert "F1" in ts[0].cols[0] and ts[0].cells[0][0].mean == pytest.approx(0.51)
    assert "val-tuned threshold" in ts[0].note


def test_bold_only_beyond_the_spread():
    recs = _full()
    t3 = report.tables(recs)[2]
    assert t3.best() == {0: 1}  # depth 1 is 10 points above, std 1 point
    md = t3.markdown()
    assert "| depth 1 | **71.00 ± 1.00** |" in md
    # bring depth 2 within the spread of depth 1: no bold
    for r in recs:
        if r["head"] == "ste" and r["depth"] == 2:
            r["test"]["acc1"] += 0.095
    t3 = report.tables(recs)[2]
    assert t3.best() == {}
    assert "**" not in t3.markdown()
    # one seed: no spread, so no bold and no "± 0.00"
    t3 = report.tables([r for r in _full() if r["seed"] == 0])[2]
    assert t3.best() == {} and "| depth 1 | 70.00 |" in t3.markdown()


def test_selection_on_val_picks_the_setting_then_reports_its_test():
    recs = [_rec("meanfc", 0, s, 0.40, val=0.9, lr=1e-2) for s in range(2)]  # best val, worse test
    recs += [_rec("meanfc", 0, s, 0.70, val=0.5, lr=1e-3) for s in range(2)]
    recs += [_rec("ste", 1, s, 0.60) for s in range(2)]
    t1 = report.tables(recs)[0]
    assert t1.cells[0][0].mean == pytest.approx(0.40)
    assert t1.note == "Selected on val: vmae + meanFC on synth: lr=0.01 (of 2 settings)."
    assert "lr=0.01" in t1.markdown()


def test_tables_ii_iii_need_their_own_runs():
    recs = [r for r in _full() if (r["head"], r["depth"]) in (("meanfc", 0), ("tr", 1), ("ste", 1))]
    assert [t.title.split(":")[0] for t in report.tables(recs)] == ["Table I"]


def test_table_i_two_backbones_two_datasets():
    recs = _full(backbones=("vmae", "unif"))
    recs += [
        dict(r, dataset="other", cache_fingerprint="o" + r["cache_fingerprint"]) for r in _full(multi=True)
    ]
    t1 = report.tables(recs)[0]
    assert len(t1.rows) == 6 and len(t1.cols) == 2
    assert t1.cols == ["synth (Acc@1)", "other (F1)"]  # order of appearance in results.jsonl
    assert t1.rows[0] == "vmae + meanFC" and t1.rows[3] == "unif + meanFC"
    assert t1.cells[3][1] is None  # unif has no runs on "other"
    assert t1.cells[0][1].mean == pytest.approx(0.51) and t1.cells[3][0].mean == pytest.approx(0.51)


def test_bad_results_line_is_named(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text(json.dumps(_rec("ste", 1, 0, 0.5)) + "\n{oops\n")
    with pytest.raises(report.ResultsError, match=r"results.jsonl:2: not JSON"):
        report.load_results(p)
    with pytest.raises(report.ResultsError, match="no such results file"):
        report.load_results(tmp_path / "nope.jsonl")


def test_position_correlation_equals_numpy_corrcoef():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 5, 2, 3)).astype(np.float32)  # [N, n, c, h, w], P = 12
    tokens = (
        x.astype(np.float64).transpose(0, 1, 3, 4, 2).reshape(3, 12, 5)
    )  # [N, P, c], P in (n, h, w) order
    ref = np.mean([np.corrcoef(t) for t in tokens], 0)
    got = report.position_correlation(x)
    assert got.shape == (12, 12)
    np.testing.assert_allclose(got, ref, atol=1e-12)
    off = ref[~np.eye(12, dtype=bool)].mean()
    assert report.mean_off_diagonal(got) == pytest.approx(off)


def test_dataset_name_falls_back_to_the_cache_name():
    rec = {"cache": "work/cache/synth-multi-videomaev2-tiny.zarr", "backbone": "videomaev2-tiny"}
    assert report.dataset_of(rec) == "synth-multi"
    assert (
        report.dataset_of({"cache": "w/tinyvirat/videomaev2.zarr/", "backbone": "videomaev2"}) == "tinyvirat"
    )
    assert report.dataset_of({"dataset": {"name": "atomica"}}) == "atomica"


def test_correlation_maps_of_a_cache_and_a_run(tmp_path):
    from test_sweep import BASE, make_cache

    from stecache import sweep

    url = make_cache(tmp_path / "c.zarr")
    text = report.correlation_maps(url, tmp_path / "fig", split="val", max_clips=5)
    assert "raw cache features" in text and (tmp_path / "fig" / "correlation_c_val.png").exists()
    from stecache.cache import open_cache

    c = open_cache(url)
    x = c.read(c.rows("val")[:5]).astype(np.float32)
    raw = report.mean_off_diagonal(report.position_correlation(x))
    assert f"{raw:.4f}" in text
    sweep.run_sweep(sweep.plan([url], heads="ste:1", base=BASE), tmp_path / "runs", progress=False, echo=str)
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    text = report.correlation_maps(run, tmp_path / "fig", max_clips=5)
    assert "after ste d1 blocks" in text and text.count("mean off-diagonal") == 2


def test_correlation_of_a_run_whose_cache_moved_takes_cache_and_refuses_another(tmp_path):
    """report --correlation RUN: a moved cache is named; --cache COPY works; --cache of another is refused."""
    import shutil

    from click.testing import CliRunner
    from test_sweep import make_cache

    from stecache import train as T
    from stecache.cache import open_cache
    from stecache.cli import cli

    old, new, run_dir = tmp_path / "old.zarr", tmp_path / "new.zarr", tmp_path / "run"
    make_cache(old)
    T.train(T.TrainConfig(head="ste", depth=1, epochs=1, batch_size=8), str(old), run_dir, progress=False)
    shutil.copytree(old, new)
    shutil.rmtree(old)
    run = ["report", "--correlation", str(run_dir), "--out", str(tmp_path / "fig"), "--max-clips", "5"]
    invoke = CliRunner().invoke

    res = invoke(cli, run)
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert f"{old}: the cache run {run_dir} was trained on is not there; moved? pass --cache" in res.output

    res = invoke(cli, [*run, "--cache", str(new)])
    assert res.exit_code == 0, res.output
    c = open_cache(str(new))
    raw = report.mean_off_diagonal(report.position_correlation(c.read(c.rows("val")[:5]).astype(np.float32)))
    assert f"raw cache features           mean off-diagonal correlation {raw:.4f}" in res.output
    assert "after ste d1 blocks" in res.output and (tmp_path / "fig" / "correlation_run_val.png").exists()

    same_attrs = make_cache(tmp_path / "o1.zarr", seed=1)  # other features: refused by the content digest
    other_classes = make_cache(tmp_path / "o2.zarr", k=4)  # other attributes: refused by the fingerprint
    for other, why in ((same_attrs, "but other content"), (other_classes, "is not the one run")):
        res = invoke(cli, [*run, "--cache", other])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert f"cache {other}" in res.output and why in res.output, res.output

    res = invoke(cli, ["report", "--correlation", str(new), "--cache", str(new), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "not a run folder; --cache names a copy of a run's cache" in res.output
    res = invoke(cli, ["report", str(tmp_path / "results.jsonl"), "--cache", str(new)])
    assert res.exit_code == 2 and "--cache goes with --correlation RUN" in res.output


# ---- any grid, Table I+, degenerate runs, figures, HTML ------------------------------------------------


def test_report_of_any_grid_shows_every_configuration(tmp_path):
    """A user's `--heads ste:1-2 --set lr=...` grid: no named table fits, every (depth, lr) is a row."""
    recs = [
        _rec("ste", d, s, 0.5 + 0.1 * d + lr, lr=lr) for d in (1, 2) for s in range(2) for lr in (0.01, 0.02)
    ]
    grid = report.grid_tables(recs)
    assert len(grid) == 1
    g = grid[0]
    assert g.rows == ["ste d1 lr=0.01", "ste d1 lr=0.02", "ste d2 lr=0.01", "ste d2 lr=0.02"]
    assert g.used == len(recs) == 8 and g.cells[3][0].mean == pytest.approx(0.72) and g.cells[3][0].n == 2
    md = report.write_report(_write(tmp_path, recs), tmp_path / "rep", plots=False).read_text()
    assert "ste d2 lr=0.02" in md and "Uses 8 runs." in md and "Table I:" not in md


def test_table_i_plus_puts_the_probes_beside_table_i():
    recs = _full()
    for h, d, v in (("linear", 0, 0.40), ("attentive", 1, 0.58), ("vjepa2", 4, 0.61), ("ep", 0, 0.55)):
        recs += [_rec(h, d, s, v + 0.01 * s) for s in range(3)]
    ts = report.tables(recs)
    assert [t.title.split(":")[0] for t in ts] == ["Table I", "Table I+", "Table II", "Table III"]
    tp = ts[1]
    assert [r.split(" + ")[1] for r in tp.rows] == ["meanFC", "Tr_head d1", "STE_head d1", "linear probe",
                                                   "attentive d1", "V-JEPA 2 attentive d4", "EP"]  # fmt: skip
    assert tp.cells[5][0].mean == pytest.approx(0.62) and tp.cells[6][0].mean == pytest.approx(0.56)
    assert tp.used == 21
    assert tp.cells[:3] == ts[0].cells  # the same cells as Table I


def test_degenerate_runs_are_flagged_in_cells_csv_and_console(tmp_path):
    from click.testing import CliRunner

    from stecache.cli import cli

    recs = _full(multi=True)
    for r in recs:
        if r["head"] == "stemean" and r["seed"] < 2:
            r["degenerate"] = "no label predicted at threshold 0.50"
    t2 = report.tables(recs)[1]
    cell = t2.cells[2][0]
    assert cell.degenerate == 2 and cell.fmt().endswith("†2/3")
    res = CliRunner().invoke(cli, ["report", str(_write(tmp_path, recs)), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "†2/3" in res.output and "### Degenerate runs" in res.output
    assert res.output.count("stecache: warning: degenerate run stemean1-") == 2
    rows = list(csv.DictReader(open(tmp_path / "r" / "table_ii.csv")))
    assert [r["degenerate_runs"] for r in rows if r["row"] == "STEb+meanFC"][0] == "2"


def test_figures_300_dpi_with_vector_twin_and_html_self_contained(tmp_path):
    from PIL import Image

    recs = _full(multi=True)
    md = report.write_report(_write(tmp_path, recs), tmp_path / "rep", html=True)
    for name in ("table_i", "table_ii", "table_iii", "table_iii_depth"):
        png = tmp_path / "rep" / f"{name}.png"
        dpi = Image.open(png).info["dpi"]
        assert dpi[0] == pytest.approx(300, abs=1)
        assert (tmp_path / "rep" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5  # every figure embedded
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page  # nothing external
    assert "Table III: STE_head depth" in page and page.count("<details>") == len(recs)
    assert md.exists()


def test_bar_labels_name_a_single_backbone_once(tmp_path, monkeypatch):
    from stecache.report import figures

    figs = []
    monkeypatch.setattr(figures, "save", lambda fig, png: figs.append(fig) or [png])
    one = report.table_i(_full())
    figures.plot_bars(one, tmp_path / "a.png")
    ax = figs[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["meanFC", "Tr_head d1", "STE_head d1"]
    assert ax.get_title() == "vmae on synth"  # the backbone once, in the panel title
    two = report.table_i(_full(backbones=("vmae", "unif")))
    figures.plot_bars(two, tmp_path / "b.png")
    labels = [t.get_text() for t in figs[-1].axes[0].get_xticklabels()]
    assert labels[0] == "vmae + meanFC" and labels[-1] == "unif + STE_head d1"
    assert [ln.get_xdata()[0] for ln in figs[-1].axes[0].lines if ln.get_linestyle() == "--"] == [2.5]
    assert not [ln for ln in figs[0].axes[0].lines if ln.get_linestyle() == "--"]  # one backbone: no rule
    recs = [_rec(h, d, s, 0.5) for h, d in [("meanfc", 0), ("linear", 0), *(("ste", d) for d in range(5)),
            ("stemean", 1), ("tr", 1)] for s in range(2)]  # fmt: skip
    grid = report.grid_tables(recs)[0]  # rows "meanfc d0", ...: no backbone in the labels
    figures.plot_bars(grid, tmp_path / "c.png")
    assert not [ln for ln in figs[-1].axes[0].lines if ln.get_linestyle() == "--"]  # was a rule between all
    bars = figs[-1].axes[0].patches
    assert len(grid.rows) == 9 and [b.get_hatch() for b in bars].count("//") == 1  # 9th colour: hatched
