"""Metrics against values computed by hand on small fixed inputs (see the comments for the arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from stecache import metrics

# 4 samples, 3 classes; sample 2 is all-negative; class 2 has no positives and is never predicted.
TARGET = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
PROBS = np.array([[0.9, 0.6, 0.1], [0.4, 0.7, 0.2], [0.2, 0.1, 0.3], [0.8, 0.3, 0.05]])
# at 0.5 the predictions are [[1,1,0],[0,1,0],[0,0,0],[1,0,0]]


def test_multilabel_hand_computed():
    m = metrics.multilabel_metrics(PROBS, TARGET)
    # class 0: tp=1 (s0) fp=1 (s3) fn=1 (s1) -> P=R=F1=1/2; class 1 likewise; class 2: 0/0 -> 0
    assert m["per_class"]["f1"] == pytest.approx([0.5, 0.5, 0.0])
    assert m["per_class"]["precision"] == pytest.approx([0.5, 0.5, 0.0])
    assert m["per_class"]["support"] == [2, 2, 0]
    assert m["macro_f1"] == pytest.approx(1 / 3)
    assert m["macro_precision"] == pytest.approx(1 / 3)
    assert m["macro_recall"] == pytest.approx(1 / 3)
    # pooled: tp=2 fp=2 fn=2
    assert m["micro_f1"] == pytest.approx(0.5)
    assert m["micro_precision"] == pytest.approx(0.5)
    # per sample F1: s0 2/3, s1 2/3, s2 0/0 -> 0, s3 0
    assert m["sample_f1"] == pytest.approx(1 / 3)
    # AP class 0: ranking T F T F -> (1 + 2/3) / 2; class 1 the same; class 2 has no positive -> excluded
    assert m["per_class"]["ap"][:2] == pytest.approx([5 / 6, 5 / 6])
    assert np.isnan(m["per_class"]["ap"][2])
    assert m["mAP"] == pytest.approx(5 / 6)


def test_multilabel_zero_division_one():
    m = metrics.multilabel_metrics(PROBS, TARGET, zero_division=1.0)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert m["sample_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)


def test_multilabel_other_threshold():
    m = metrics.multilabel_metrics(PROBS, TARGET, threshold=0.35)
    # preds: s0 [1,1,0], s1 [1,1,0], s2 [0,0,0], s3 [1,0,0]
    # class 0: tp2 fp1 fn0 -> F1 4/5; class 1: tp1 fp1 fn1 -> 1/2
    assert m["per_class"]["f1"] == pytest.approx([0.8, 0.5, 0.0])


def test_average_precision_ties():
    # one tied pair at 0.5 (one positive): P=1/2 at R=1/2, then P=2/3 at R=1 -> 0.25 + 1/3
    assert metrics.average_precision(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1])) == pytest.approx(7 / 12)
    assert metrics.average_precision(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0


def test_tune_threshold_prefers_closest_to_half():
    # any threshold in (0.1, 0.3] separates perfectly; 0.3 is the one nearest to 0.5
    assert metrics.tune_threshold(np.array([[0.3], [0.1]]), np.array([[1], [0]])) == pytest.approx(0.3)
    # well-calibrated data keep 0.5
    assert metrics.tune_threshold(np.array([[0.9], [0.1]]), np.array([[1], [0]])) == pytest.approx(0.5)


def test_singlelabel_hand_computed():
    target = np.array([0, 0, 1, 2, 2])
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.4, 0.35, 0.25]]
    )  # top-1: 0 1 1 0 0 -> right on s0, s2; class 2 never predicted
    m = metrics.singlelabel_metrics(probs, target, topk=2)
    assert m["acc1"] == pytest.approx(2 / 5)
    assert m["acc5"] == pytest.approx(4 / 5)  # top-2 misses only s4 (0, 1)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [2, 0, 0]]
    assert m["per_class"]["acc"] == pytest.approx([0.5, 1.0, 0.0])
    assert m["mean_class_acc"] == pytest.approx(0.5)
    assert metrics.singlelabel_metrics(probs, target)["acc5"] == 1.0  # top-min(5, 3) covers all classes


def test_singlelabel_absent_class_and_ties():
    # class 1 has no samples: left out of the mean class accuracy; tie 0.5/0.5 goes to the lower index
    m = metrics.singlelabel_metrics(np.array([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]]), np.array([0, 2]))
    assert m["acc1"] == 1.0
    assert np.isnan(m["per_class"]["acc"][1])
    assert m["mean_class_acc"] == 1.0
    assert metrics.main_metric(False) == "acc1" and metrics.main_metric(True) == "mAP"


def test_selection_is_threshold_free_and_nan_ranks_last():
    """A head whose scores never reach 0.5 but rank the positives first: F1@0.5 = 0, mAP = 1."""
    target = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    probs = np.where(target == 1, 0.4, 0.1)
    m = metrics.multilabel_metrics(probs, target)
    assert m["macro_f1"] == 0.0 and m["mAP"] == 1.0
    assert metrics.selection_score(m, True) == 1.0
    assert metrics.selection_score({"mAP": float("nan")}, True) == -np.inf
    assert metrics.tune_threshold(probs, target) in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def test_degenerate_predictions():
    never = np.full((3, 2), 0.2)
    assert metrics.degenerate(never, True) == "no label predicted at threshold 0.50"
    assert metrics.degenerate(never, True, 0.1).startswith("the same labels for every clip")
    assert metrics.degenerate(np.array([[0.6, 0.1], [0.1, 0.6]]), True) == ""
    assert metrics.degenerate(np.array([[0.6, 0.4], [0.7, 0.3]]), False) == "class 0 for every clip"
    named = metrics.degenerate(np.array([[0.6, 0.4], [0.7, 0.3]]), False, class_names=["walk", "run"])
    assert named == "class 0 (walk) for every clip"  # the console and the report name the class
    assert metrics.degenerate(np.array([[0.6, 0.4], [0.3, 0.7]]), False) == ""


@pytest.mark.parametrize("multi", [False, True])
def test_run_figure_has_percent_title_colorbar_and_300_dpi(tmp_path, monkeypatch, multi):
    import matplotlib.pyplot as plt
    from PIL import Image

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    if multi:
        m = {"per_class": {"f1": [0.5, 0.25]}, "threshold": 0.3, "macro_f1": 0.375}
    else:
        m = {"confusion": [[3, 1], [0, 4]], "acc1": 0.875}
    metrics.plot_metrics(m, ["a", "b"], multi, tmp_path / "f.png")
    title = figs[0].axes[0].get_title()
    assert title == ("test: per-class F1\nat threshold 0.30 (macro-F1 37.5 %)" if multi
                     else "test: confusion (Acc@1 87.5 %)")  # fmt: skip
    figs[0].canvas.draw()
    box = figs[0].axes[0].title.get_window_extent()
    assert figs[0].bbox.x0 <= box.x0 and box.x1 <= figs[0].bbox.x1  # the title is not cut off
    assert len(figs[0].axes) == (1 if multi else 2)  # the confusion matrix has its colorbar
    assert Image.open(tmp_path / "f.png").info["dpi"][0] == pytest.approx(300, abs=1)
