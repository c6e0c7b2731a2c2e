"""Evaluation metrics as pure numpy functions: probabilities and labels in, plain dicts out.

Multi-label (TinyVIRAT): macro-F1 over all K classes on binary predictions is the challenge's ranking
metric ("F1-score averaged over each class"). Where a ratio is 0/0 (a class with no positives and no
predictions, or an all-negative sample predicted all-negative) it counts as `zero_division` = 0, exactly
like scikit-learn's default; the official scorer is not public, so this is our documented choice.
mAP averages the per-class average precision over classes that have at least one positive.
Single-label: Acc@1, Acc@k, mean class accuracy (over classes present), confusion matrix (rows = truth).
"""

from __future__ import annotations

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)  # global thresholds tried on val


def _div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    """num / den elementwise, `zero_division` where den == 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(zero_division))
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_prf(pred: np.ndarray, target: np.ndarray, zero_division: float = 0.0) -> dict:
    """Per-class precision, recall, F1 and support of binary predictions [N, K] against targets [N, K]."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    tp = (pred & target).sum(0)
    fp = (pred & ~target).sum(0)
    fn = (~pred & target).sum(0)
    return {
        "precision": _div(tp, tp + fp, zero_division),
        "recall": _div(tp, tp + fn, zero_division),
        "f1": _div(2 * tp, 2 * tp + fp + fn, zero_division),
        "support": target.sum(0).astype(np.int64),
    }


def average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    """AP of one class: sum over distinct thresholds of (R_i - R_{i-1}) * P_i; NaN with no positives."""
    scores, target = np.asarray(scores, dtype=np.float64), np.asarray(target).astype(bool)
    n_pos = int(target.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], target[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of tied scores
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_metrics(
    probs: np.ndarray, target: np.ndarray, threshold: float = 0.5, zero_division=0.0
) -> dict:
    """All multi-label metrics of probabilities [N, K] vs multi-hot targets [N, K] at one global threshold."""
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target).astype(bool)
    pred = probs >= threshold
    pc = per_class_prf(pred, target, zero_division)
    tp, fp, fn = (pred & target).sum(), (pred & ~target).sum(), (~pred & target).sum()
    tp_s, fp_s, fn_s = (pred & target).sum(1), (pred & ~target).sum(1), (~pred & target).sum(1)
    aps = np.array([average_precision(probs[:, k], target[:, k]) for k in range(target.shape[1])])
    return {
        "threshold": float(threshold),
        "macro_f1": float(pc["f1"].mean()),
        "macro_precision": float(pc["precision"].mean()),
        "macro_recall": float(pc["recall"].mean()),
        "micro_f1": float(_div(2 * tp, 2 * tp + fp + fn, zero_division)),
        "micro_precision": float(_div(tp, tp + fp, zero_division)),
        "micro_recall": float(_div(tp, tp + fn, zero_division)),
        "sample_f1": float(_div(2 * tp_s, 2 * tp_s + fp_s + fn_s, zero_division).mean()),
        "mAP": float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan"),
        "per_class": {k: v.tolist() for k, v in pc.items()} | {"ap": aps.tolist()},
    }


def tune_threshold(probs: np.ndarray, target: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """The global threshold in `grid` with the best macro-F1 (ties: the one closest to 0.5, then lowest)."""
    probs, target = np.asarray(probs), np.asarray(target).astype(bool)
    scores = [per_class_prf(probs >= t, target)["f1"].mean() for t in grid]
    best = max(scores)
    ties = [t for t, s in zip(grid, scores, strict=True) if s == best]
    return float(min(ties, key=lambda t: (abs(t - 0.5), t)))


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts, row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(target), np.asarray(pred)), 1)
    return cm


def singlelabel_metrics(probs: np.ndarray, target: np.ndarray, topk: int = 5) -> dict:
    """Acc@1, Acc@5 (top-min(topk, K)), mean class accuracy, confusion: probs [N, K] vs labels [N]."""
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target).astype(np.int64)
    n, num_classes = probs.shape
    k = min(topk, num_classes)
    ranked = np.argsort(-probs, axis=1, kind="stable")  # ties: lower class index first
    top1 = ranked[:, 0]
    hit_k = (ranked[:, :k] == target[:, None]).any(1)
    cm = confusion_matrix(top1, target, num_classes)
    support = cm.sum(1)
    per_class_acc = _div(np.diag(cm), support, np.nan)
    return {
        "acc1": float((top1 == target).mean()) if n else float("nan"),
        "acc5": float(hit_k.mean()) if n else float("nan"),  # top-min(5, K)
        "mean_class_acc": float(np.nanmean(per_class_acc)) if (support > 0).any() else float("nan"),
        "per_class": {"acc": per_class_acc.tolist(), "support": support.tolist()},
        "confusion": cm.tolist(),
    }


def evaluate_probs(probs: np.ndarray, target: np.ndarray, multi_label: bool, threshold: float = 0.5) -> dict:
    """Dispatch: multi-label metrics at `threshold` (multi-hot [N, K] target) or single-label ([N] target)."""
    if multi_label:
        return multilabel_metrics(probs, target, threshold)
    return singlelabel_metrics(probs, target)


def main_metric(multi_label: bool) -> str:
    """The metric the best epoch is selected on: mAP for multi-label caches, Acc@1 for single-label.

    mAP is threshold-free: F1 at the fixed 0.5 threshold stays 0 while a head's scores are all below 0.5,
    so selecting on it picks epoch 1 of a head that is still learning (its mAP rising). F1 is reported at
    the val-tuned threshold (`tune_threshold`) with F1 at 0.5 beside it.
    """
    return "mAP" if multi_label else "acc1"


def selection_score(m: dict, multi_label: bool) -> float:
    """`m[main_metric]`, with an undefined value (NaN: no val positives) ranked below every real one."""
    v = m.get(main_metric(multi_label), float("nan"))
    return -np.inf if v is None or np.isnan(v) else float(v)


def degenerate(probs: np.ndarray, multi_label: bool, threshold: float = 0.5, class_names=None) -> str:
    """Why a run's predictions carry no information ("" when they do): multi-label, no clip gets any label
    at `threshold`, or every clip gets the same label set; single-label, every clip gets the same class."""
    probs = np.asarray(probs)
    if len(probs) == 0:
        return ""
    if multi_label:
        pred = probs >= threshold
        if not pred.any():
            return f"no label predicted at threshold {threshold:.2f}"
        if len(probs) > 1 and (pred == pred[:1]).all():
            return f"the same labels for every clip at threshold {threshold:.2f}"
        return ""
    top1 = probs.argmax(1)
    name = f" ({class_names[int(top1[0])]})" if class_names is not None else ""
    return f"class {int(top1[0])}{name} for every clip" if len(probs) > 1 and (top1 == top1[0]).all() else ""


def summary(m: dict) -> dict:
    """Scalar metrics only (drops per-class tables and the confusion matrix)."""
    return {k: v for k, v in m.items() if not isinstance(v, dict | list)}


def format_table(result: dict, class_names=None) -> str:
    """A readable table of a {run, split, clips, metrics[, tuned]} result (percentages)."""
    lines = [f"{result['run']} — split {result['split']} ({result['clips']} clips)"]
    tables = [("", result["metrics"])]
    if "tuned" in result and result["tuned"]["threshold"] != result["metrics"]["threshold"]:
        tables.append(("val-tuned ", result["tuned"]))
    for title, m in tables:
        if "threshold" in m:
            lines.append(f"  {title}threshold {m['threshold']:.2f}")
        k_classes = len(m["confusion"]) if "confusion" in m else None
        hidden = {"threshold"} | ({"acc5"} if k_classes is not None and k_classes <= 5 else set())
        lines += [f"    {k:<16} {100 * v:6.2f}" for k, v in summary(m).items() if k not in hidden]
        pc = m.get("per_class", {})
        if "f1" in pc and class_names:
            for name, p, r, f, s in zip(
                class_names, pc["precision"], pc["recall"], pc["f1"], pc["support"], strict=True
            ):
                lines.append(f"      {name:<24} P {100 * p:6.2f}  R {100 * r:6.2f}  F1 {100 * f:6.2f}  n={s}")
        elif "confusion" in m and class_names:
            lines += _single_label_per_class(m, class_names)
    return "\n".join(lines)


def _single_label_per_class(m: dict, class_names) -> list[str]:
    """Per-class accuracy (= recall), precision and support from the confusion matrix (rows = true)."""
    cm = np.asarray(m["confusion"])
    precision = _div(np.diag(cm), cm.sum(0), 0.0)  # 0/0 (never predicted) counts as 0
    acc = m["per_class"]["acc"]

    def pct(v) -> str:
        return "   -  " if v is None or np.isnan(v) else f"{100 * v:6.2f}"

    return [
        f"      {name:<24} acc {pct(a)}  P {pct(p)}  R {pct(a)}  n={s}"
        for name, a, p, s in zip(class_names, acc, precision, m["per_class"]["support"], strict=True)
    ]


def plot_metrics(m: dict, class_names, multi: bool, path, split: str = "test") -> None:
    """Per-class F1 bars (multi-label) or the confusion matrix (single-label) of `split` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * K + 2), 4 if multi else max(4, 0.4 * K + 2)))
    if multi:
        bars = ax.bar(range(K), m["per_class"]["f1"])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_ylabel("F1")
        ax.set_ylim(0, 1.08)
        macro = f"macro-F1 {100 * m['macro_f1']:.1f} %"  # two lines: one would run past a narrow figure
        ax.set_title(f"{split}: per-class F1\nat threshold {m['threshold']:.2f} ({macro})")
    else:
        cm = np.asarray(m["confusion"])
        im = ax.imshow(cm, cmap="Blues")
        fig.colorbar(im, ax=ax, shrink=0.8).set_label("clips")
        for (i, j), v in np.ndenumerate(cm):  # white on the dark cells, black on the light ones
            color = "white" if v > cm.max() / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color=color)
        ax.set_ylabel("true")
        ax.set_xlabel("predicted")
        ax.set_yticks(range(K), class_names)
        ax.set_title(f"{split}: confusion (Acc@1 {100 * m['acc1']:.1f} %)")  # % as in every other output
    ax.set_xticks(range(K), class_names, rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=300)  # as the report's figures
    plt.close(fig)
