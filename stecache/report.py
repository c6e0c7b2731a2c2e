"""Tables I–III of the paper, plots and Fig. 1 correlation heat maps, derived only from `results.jsonl`.

`write_report(results, out)` reads one JSON object per run, picks per cell (cache × head × depth) the
hyperparameters with the best mean val metric, and writes `ablation.md`, one CSV and one PNG bar chart per
table (+ a depth curve for Table III). Every cell is mean ± std over seeds; the best cell of a column is
bold only when its mean − std exceeds every other cell's mean + std. `correlation_maps` draws Fig. 1: the
Pearson correlation among a clip's features at its n·h·w positions, raw and after a head's blocks.
Run: `stecache report runs/results.jsonl --out reports/`.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import canonical_json
from .errors import ResultsError
from .metrics import main_metric

# (label, metric key) columns; values are fractions, shown as percentages like the paper
MULTI_LABEL_METRICS = (("F1", "macro_f1"), ("recall", "macro_recall"), ("precision", "macro_precision"))
SINGLE_LABEL_METRICS = (("Acc@1", "acc1"), ("Acc@5", "acc5"), ("mean class acc", "mean_class_acc"))
# each row: (label, [(head, depth) alternatives, first present wins]); depth None = any
TABLE_I_ROWS = (("meanFC", [("meanfc", None)]), ("Tr_head d1", [("tr", 1)]), ("STE_head d1", [("ste", 1)]))
TABLE_II_ROWS = (
    ("meanFC", [("meanfc", None)]),
    ("patch_base_classifier", [("patch", None), ("ste", 0)]),
    ("STEb+meanFC", [("stemean", 1)]),
    ("STEb+patch_base_classifier", [("ste", 1)]),
)
TABLE_III_ROWS = tuple((f"depth {d}", [("ste", d)]) for d in range(5))
# config keys that do not make a different hyperparameter setting
NOT_HYPERPARAMS = {"seed", "head", "depth", "out", "run", "name", "tag", "ram_limit"}


@dataclass(frozen=True)
class Cell:
    """mean ± std over seeds of one metric of one selected setting."""

    mean: float
    std: float
    n: int

    def fmt(self) -> str:
        """The cell in %, e.g. 51.00 ± 1.00; a single seed has no spread to show."""
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}" if self.n > 1 else f"{100 * self.mean:.2f}"


# ---- reading results -----------------------------------------------------------------------------------


def load_results(path: str | Path) -> list[dict]:
    """All run records of a results.jsonl, in file order; the message names a bad line."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such results file (run `stecache ablate` first)")
    out = []
    text = path.read_bytes().decode("utf-8", errors="replace")  # binary garbage: "not JSON" on its line
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not text.endswith("\n"):  # a write cut short: the next run rewrites it
                warnings.warn(f"{path}:{i}: torn last line skipped (an interrupted write)", stacklevel=2)
                continue
            raise ResultsError(f"{path}:{i}: not JSON ({e.msg})") from None
        for key in ("head", "seed", "val", "test"):
            if key not in rec:
                raise ResultsError(f"{path}:{i}: run record has no {key!r}")
        out.append(rec)
    return out


def cache_key(rec: dict) -> str:
    return rec.get("cache_fingerprint") or rec.get("cache", "?")


def backbone_of(rec: dict) -> str:
    return rec.get("backbone") or "?"


def dataset_of(rec: dict) -> str:
    """The record's dataset name; else the cache name without the backbone ("tv-videomaev2.zarr" -> "tv")."""
    if rec.get("dataset"):
        name = rec["dataset"]
        return name if isinstance(name, str) else str(name.get("name", name))
    path = Path(str(rec.get("cache", "?")).rstrip("/"))
    bb = backbone_of(rec)
    rest = path.stem.replace(bb, "").strip("-_. ") if bb != "?" else path.stem
    return rest or path.parent.name


def _hyperparams(rec: dict) -> str:
    cfg = rec.get("config", {})
    return canonical_json({k: v for k, v in cfg.items() if k not in NOT_HYPERPARAMS})


def _depth(rec: dict) -> int | None:
    d = rec.get("depth", rec.get("config", {}).get("depth"))
    return None if d is None else int(d)


def _stats(values: list[float]) -> Cell:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0  # sample std over seeds
    return Cell(float(v.mean()), std, len(v))


def select(runs: list[dict], alternatives: list[tuple[str, int | None]]) -> tuple[list[dict], str]:
    """The seeds of the best setting (by mean val main metric) of the first (head, depth) present.

    Returns (runs of that setting by seed, "" or the chosen values of the keys that differ, e.g. "lr=0.01").
    """
    for head, depth in alternatives:
        match = [r for r in runs if r["head"] == head and (depth is None or _depth(r) == depth)]
        if match:
            break
    else:
        return [], ""
    groups: dict[str, dict[int, dict]] = {}
    for r in match:  # a re-run of the same seed replaces the earlier record
        groups.setdefault(_hyperparams(r), {})[int(r["seed"])] = r
    metric = main_metric(bool(match[0].get("multi_label", False)))
    best = max(groups.values(), key=lambda g: np.mean([r["val"][metric] for r in g.values()]))
    chosen = next(iter(best.values())).get("config", {})
    cfgs = [next(iter(g.values())).get("config", {}) for g in groups.values()]
    differ = sorted(
        k for k in chosen if k not in NOT_HYPERPARAMS and len({canonical_json(c.get(k)) for c in cfgs}) > 1
    )
    choice = ", ".join(f"{k}={chosen[k]}" for k in differ)
    return [best[s] for s in sorted(best)], (f"{choice} (of {len(groups)} settings)" if choice else "")


def _cell(runs: list[dict], metric: str) -> Cell | None:
    vals = [r["test"][metric] for r in runs if metric in r["test"]]
    return _stats(vals) if vals else None


# ---- tables ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A titled grid of cells; `best[col]` = row index of the significantly best cell, or absent."""

    title: str
    rows: list[str]
    cols: list[str]
    cells: list[list[Cell | None]]
    note: str = ""

    def best(self) -> dict[int, int]:
        """Per column the row whose mean − std exceeds every other row's mean + std (≥ 2 seeds each)."""
        out = {}
        for j in range(len(self.cols)):
            col = [(i, row[j]) for i, row in enumerate(self.cells) if row[j] is not None]
            if len(col) < 2 or min(c.n for _, c in col) < 2:  # no spread known, no claim
                continue
            i_best, top = max(col, key=lambda t: t[1].mean)
            if all(top.mean - top.std > c.mean + c.std for i, c in col if i != i_best):
                out[j] = i_best
        return out

    def markdown(self) -> str:
        best = self.best()
        lines = [f"| | {' | '.join(self.cols)} |", "|---" * (len(self.cols) + 1) + "|"]
        for i, (name, row) in enumerate(zip(self.rows, self.cells, strict=True)):
            cells = ["—" if c is None else c.fmt() for c in row]
            cells = [f"**{c}**" if best.get(j) == i else c for j, c in enumerate(cells)]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        return f"### {self.title}\n\n" + "\n".join(lines) + (f"\n\n{self.note}" if self.note else "")

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "column", "mean", "std", "n_seeds"])
            for name, row in zip(self.rows, self.cells, strict=True):
                for col, c in zip(self.cols, row, strict=True):
                    if c is not None:
                        w.writerow([name, col, f"{c.mean:.6f}", f"{c.std:.6f}", c.n])


def _by_cache(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(cache_key(r), []).append(r)
    return out


def _metrics_of(runs: list[dict]) -> tuple[tuple[str, str], ...]:
    return MULTI_LABEL_METRICS if runs[0].get("multi_label") else SINGLE_LABEL_METRICS[:1]


def table_i(results: list[dict]) -> Table | None:
    """Heads (meanFC, Tr d1, STE d1) per backbone × datasets (first-seen order), main metric of each."""
    caches = _by_cache(results)
    backbones = list(dict.fromkeys(backbone_of(r[0]) for r in caches.values()))  # in order of appearance
    datasets = list(dict.fromkeys(dataset_of(r[0]) for r in caches.values()))
    rows, cells, notes = [], [], []
    for bb in backbones:
        for label, alts in TABLE_I_ROWS:
            row = []
            for ds in datasets:
                runs = [
                    r for rs in caches.values() for r in rs if (backbone_of(r), dataset_of(r)) == (bb, ds)
                ]
                sel, choice = select(runs, alts) if runs else ([], "")
                row.append(_cell(sel, main_metric(bool(sel[0].get("multi_label")))) if sel else None)
                if choice:
                    notes.append(f"{bb} + {label} on {ds}: {choice}")
            rows.append(f"{bb} + {label}")
            cells.append(row)
    if all(c is None for row in cells for c in row):
        return None
    cols = [f"{ds} ({'F1' if _is_multi(results, ds) else 'Acc@1'})" for ds in datasets]
    return Table("Table I: classifier heads × backbones", rows, cols, cells, _note(notes))


def _note(notes: list[str]) -> str:
    return "Selected on val: " + "; ".join(notes) + "." if notes else ""


def _is_multi(results: list[dict], dataset: str) -> bool:
    return any(r.get("multi_label") for r in results if dataset_of(r) == dataset)


def _table_on_cache(title: str, runs: list[dict], spec) -> Table | None:
    metrics = _metrics_of(runs)
    rows, cells, notes = [], [], []
    for label, alts in spec:
        sel, choice = select(runs, alts)
        rows.append(label)
        cells.append([_cell(sel, key) if sel else None for _, key in metrics])
        if choice:
            notes.append(f"{label}: {choice}")
    if sum(any(c is not None for c in row) for row in cells) < 3:  # not this table's runs (e.g. Table I's)
        return None
    return Table(title, rows, [m for m, _ in metrics], cells, _note(notes))


def tables(results: list[dict]) -> list[Table]:
    """Table I over all caches; Tables II and III for every cache that has their runs."""
    out = [t for t in [table_i(results)] if t is not None]
    for runs in _by_cache(results).values():
        where = f"{backbone_of(runs[0])} on {dataset_of(runs[0])}"
        for name, spec in (("Table II: STEb and patch_base_classifier", TABLE_II_ROWS),
                           ("Table III: STE_head depth", TABLE_III_ROWS)):  # fmt: skip
            t = _table_on_cache(f"{name} ({where})", runs, spec)
            if t is not None:
                out.append(t)
    return out


# ---- plots ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(t: Table, path: Path) -> None:
    """Grouped bar chart (rows × columns) with ±std error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(t.rows) * max(1, len(t.cols)) ** 0.5), 3.6))
    width = 0.8 / len(t.cols)
    x = np.arange(len(t.rows))
    for j, col in enumerate(t.cols):
        mean = [100 * r[j].mean if r[j] else np.nan for r in t.cells]
        std = [100 * r[j].std if r[j] else 0 for r in t.cells]
        ax.bar(x + (j - (len(t.cols) - 1) / 2) * width, mean, width, yerr=std, capsize=3, label=col)
    ax.set_xticks(x, t.rows, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.set_title(t.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_depth(t: Table, path: Path) -> None:
    """Table III as curves: metric vs STE_head depth with ±std error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    depths = [int(r.split()[-1]) for r in t.rows]
    for j, col in enumerate(t.cols):
        pts = [(d, r[j]) for d, r in zip(depths, t.cells, strict=True) if r[j] is not None]
        ax.errorbar([d for d, _ in pts], [100 * c.mean for _, c in pts], [100 * c.std for _, c in pts],
                    marker="o", capsize=3, label=col)  # fmt: skip
    ax.set_xlabel("STE_head depth (number of STEb)")
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.set_xticks(depths)
    ax.set_title(t.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slug(title: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in title.split(":")[0].lower()).strip("_")


def write_report(results_path: str | Path, out: str | Path, plots: bool = True) -> Path:
    """Write ablation.md + one CSV and PNG per table from results.jsonl; returns the markdown path."""
    results = load_results(results_path)
    ts = tables(results)
    if not ts:
        raise ResultsError(f"{results_path}: no runs that fill any of Tables I–III (heads meanfc/tr/ste/...)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({int(r["seed"]) for r in results})
    parts = [
        "# Ablation report\n",
        f"Derived from `{results_path}` ({len(results)} runs, seeds {seeds}). Test-split metrics in %, "
        "mean ± std (sample std) over seeds of the setting with the best mean val metric. **Bold**: best "
        "in its column with mean − std above every other cell's mean + std; no bold = within the spread.\n",
    ]
    used: dict[str, int] = {}
    for t in ts:
        slug = _slug(t.title)
        used[slug] = used.get(slug, 0) + 1
        slug = slug if used[slug] == 1 else f"{slug}_{used[slug]}"
        t.write_csv(out / f"{slug}.csv")
        parts.append(t.markdown() + "\n")
        if plots:
            plot_bars(t, out / f"{slug}.png")
            parts.append(f"![{t.title}]({slug}.png)\n")
            if t.title.startswith("Table III"):
                plot_depth(t, out / f"{slug}_depth.png")
                parts.append(f"![{t.title} depth curve]({slug}_depth.png)\n")
        parts.append(f"CSV: `{slug}.csv`\n")
    md = out / "ablation.md"
    md.write_text("\n".join(parts))
    return md


# ---- Fig. 1: correlation among positions ----------------------------------------------------------------


def _corr_sum(x) -> np.ndarray:
    """Σ over clips of the [P, P] position correlation of x [N, n, c, h, w] (float64)."""
    import torch

    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if x.ndim != 5:
        raise ValueError(f"position correlation expects [N, n, c, h, w], got {tuple(x.shape)}")
    tokens = x.permute(0, 1, 3, 4, 2).flatten(1, 3)  # [N, P, c]
    tokens = tokens - tokens.mean(-1, keepdim=True)
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    return torch.einsum("npc,nqc->pq", tokens, tokens).numpy()  # [P, P]


def position_correlation(x, chunk: int = 16) -> np.ndarray:
    """Mean over clips of the Pearson correlation between the c-dim features at the n·h·w positions.

    x: [N, n, c, h, w] -> [P, P] with P = n·h·w (position order n, h, w); per clip this is
    `np.corrcoef(tokens)` with tokens [P, c]. A constant token gives NaN, like numpy.
    """
    total = sum(_corr_sum(x[i : i + chunk]) for i in range(0, len(x), chunk))
    return total / len(x)


def mean_off_diagonal(corr: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a [P, P] matrix (NaN entries skipped)."""
    mask = ~np.eye(len(corr), dtype=bool)
    return float(np.nanmean(corr[mask]))


def correlation_maps(target: str | Path, out: str | Path, split: str = "val", max_clips: int = 256) -> str:
    """Fig. 1: position-correlation heat maps of a cache (raw) or a run (raw | after its head's blocks)."""
    import torch

    from . import train as T
    from .cache import open_cache

    target = Path(target)
    head, name = None, target.name.removesuffix(".zarr")
    if (target / "config.json").exists():  # a run folder
        rec = T.read_run(target)
        cfg = T.TrainConfig.from_dict(rec["config"])
        cache = open_cache(rec["cache"]["url"])
        head = T.load_head(target, rec)
        label = f"after {cfg.head} d{cfg.depth} blocks"
    else:
        cache = open_cache(str(target))
    rows = cache.rows(split)[:max_clips]
    if len(rows) == 0:
        raise ResultsError(f"{cache.url}: no extracted clips in split {split!r}")
    maps, sums = {"raw cache features": 0.0}, {}
    if head is not None:
        maps[label] = 0.0
    for i in range(0, len(rows), 16):
        x = cache.read(rows[i : i + 16]).astype(np.float32)  # [b, n, c, h, w]
        maps["raw cache features"] = maps["raw cache features"] + _corr_sum(x)
        if head is not None:
            with torch.no_grad():
                maps[label] = maps[label] + _corr_sum(head.blocks_output(torch.from_numpy(x)))
    maps = {k: v / len(rows) for k, v in maps.items()}
    sums = {k: mean_off_diagonal(v) for k, v in maps.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"correlation_{name}_{split}.png"
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.2), squeeze=False)
    for ax, (title, corr) in zip(axes[0], maps.items(), strict=True):
        im = ax.imshow(corr, cmap="jet", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{title}\nmean off-diagonal r = {sums[title]:.3f}", fontsize=9)
        ax.set_xlabel("position (n, h, w)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"Pearson r between positions, {len(rows)} {split} clips of {cache.url}", fontsize=8)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    lines = [f"{k:<28} mean off-diagonal correlation {v:.4f}" for k, v in sums.items()]
    return "\n".join(lines + [f"heat maps: {png}"])
