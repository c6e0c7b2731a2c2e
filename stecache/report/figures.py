"""Paper-ready figures: every figure as a 300 dpi PNG and a vector PDF beside it.

Bar charts: one metric per axis (a panel per table column), the Okabe–Ito colour-blind-safe palette, error
bars = sample std over seeds with n stated, every bar labelled with its value (a zero bar is drawn as a
visible stub and labelled 0.0), † on degenerate cells. Fig. 1: position-correlation heat maps with a
perceptually uniform diverging colormap (coolwarm, Moreland), a colorbar, the frame boundaries of the
(n, h, w) position order marked, and a short title (the run or cache name, not a path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ResultsError
from .tables import Table

DPI = 300
# Okabe & Ito (2008), colour-blind safe; black last
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CORR_CMAP = "coolwarm"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.spines.top": False, "axes.spines.right": False,
                         "pdf.fonttype": 42, "svg.fonttype": "none"})  # fmt: skip
    return plt


def save(fig, png: Path) -> list[Path]:
    """Write `png` at 300 dpi and its vector twin (same name, .pdf); returns both paths."""
    png = Path(png)
    fig.savefig(png, dpi=DPI, bbox_inches="tight")
    fig.savefig(png.with_suffix(".pdf"), bbox_inches="tight")
    return [png, png.with_suffix(".pdf")]


def _n_text(t: Table) -> str:
    ns = sorted({c.n for row in t.cells for c in row if c is not None})
    return f"n = {ns[0]} seeds" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds"


def _shared_backbone(rows: list[str]) -> tuple[str, list[str]]:
    """('vmae', heads) when every row is 'vmae + <head>': the backbone goes into the panel title once."""
    backbones = {r.partition(" + ")[0] for r in rows}
    if len(backbones) != 1 or not all(" + " in r for r in rows):
        return "", list(rows)
    return backbones.pop(), [r.partition(" + ")[2] for r in rows]


def plot_bars(t: Table, path: Path) -> list[Path]:
    """One panel per column (one metric per axis): a bar per row, ± sample std, values written on bars."""
    plt = _plt()
    cols = [j for j in range(len(t.cols)) if any(row[j] is not None for row in t.cells)]
    ncols = 1 if len(t.rows) > 8 else min(3, len(cols))  # many bars: one panel per line
    nrows = -(-len(cols) // ncols)
    width = max(2.6, 0.42 * len(t.rows) + 0.8)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.1 * nrows), squeeze=False)
    kinds = list(dict.fromkeys(r.split(" + ")[-1] for r in t.rows))  # a head: one colour on every backbone
    backbone, labels = _shared_backbone(t.rows)
    x = np.arange(len(t.rows))
    for ax, j in zip(axes.flat, cols, strict=False):
        cells = [row[j] for row in t.cells]
        mean = np.array([100 * c.mean if c else np.nan for c in cells])
        std = np.array([100 * c.std if c and c.n > 1 else 0.0 for c in cells])
        top = np.nanmax(mean + std) if np.isfinite(mean).any() else 1.0
        stub = max(top, 1.0) * 0.006  # a zero bar stays visible as a thin stub
        colors = [PALETTE[kinds.index(r.split(" + ")[-1]) % len(PALETTE)] for r in t.rows]
        hatch = ["//" if kinds.index(r.split(" + ")[-1]) >= len(PALETTE) else None for r in t.rows]  # 9th+
        ax.bar(x, np.where(np.isfinite(mean), np.maximum(mean, stub), 0), 0.7, color=colors, hatch=hatch,
               yerr=std, capsize=2.5, error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
               edgecolor="#333333", linewidth=0.4)  # fmt: skip
        for xi, m, s, c in zip(x, mean, std, cells, strict=True):
            if c is None:
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=6, color="#666666")
                continue
            mark = " †" if c.degenerate else ""
            ax.text(xi, m + s + top * 0.02, f"{m:.1f}{mark}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        grouped = not backbone and all(" + " in r for r in t.rows)
        for i in range(1, len(t.rows)) if grouped else ():  # several backbones: a rule between groups
            if t.rows[i].partition(" + ")[0] != t.rows[i - 1].partition(" + ")[0]:
                ax.axvline(i - 0.5, color="#999999", lw=0.6, ls="--")
        name, _, metric = t.cols[j].rstrip(")").partition(" (")  # "synth (F1)": panel synth, axis F1
        ax.set_ylabel(f"{metric or name} (%)")
        ax.set_ylim(0, max(top * 1.18, 1.0))
        ax.set_title(f"{backbone} on {name}" if backbone else name, fontsize=8)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    deg = " † = degenerate run(s)." if t.degenerate() else ""
    fig.suptitle(f"{t.title}\nmean ± sample std over seeds ({_n_text(t)}).{deg}", fontsize=8)
    fig.tight_layout()
    out = save(fig, path)
    plt.close(fig)
    return out


def plot_depth(t: Table, path: Path) -> list[Path]:
    """Table III as curves, one metric per panel: metric vs STE_head depth, ± sample std."""
    plt = _plt()
    depths = [int(r.split()[-1]) for r in t.rows]
    cols = [j for j in range(len(t.cols)) if any(row[j] is not None for row in t.cells)]
    ncols = min(3, len(cols))
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.7 * ncols, 2.4 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    for ax, j in zip(axes.flat, cols, strict=False):
        pts = [(d, r[j]) for d, r in zip(depths, t.cells, strict=True) if r[j] is not None]
        ax.errorbar([d for d, _ in pts], [100 * c.mean for _, c in pts], [100 * c.std for _, c in pts],
                    marker="o", ms=3.5, capsize=2.5, color=PALETTE[0], lw=1.2)  # fmt: skip
        ax.set_xlabel("STE_head depth")
        ax.set_ylabel(f"{t.cols[j]} (%)")
        ax.set_xticks(depths)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"{t.title}\nmean ± sample std over seeds ({_n_text(t)})", fontsize=8)
    fig.tight_layout()
    out = save(fig, path)
    plt.close(fig)
    return out


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


def correlation_maps(target: str | Path, out: str | Path, split: str = "val", max_clips: int = 256,
                     cache: str | None = None) -> str:  # fmt: skip
    """Fig. 1: position-correlation heat maps of a cache (raw) or a run (raw | after its head's blocks).

    For a run, `cache` names a copy of its cache (same fingerprint and content) when the original moved.
    """
    import torch

    from .. import train as T
    from ..cache import open_cache

    target = Path(target)
    head, name = None, target.name.removesuffix(".zarr")
    if (target / "config.json").exists():  # a run folder
        rec = T.read_run(target)
        cfg = T.TrainConfig.from_dict(rec["config"])
        cache = T.open_run_cache(target, rec, cache)
        head = T.load_head(target, rec)
        label = f"after {cfg.head} d{cfg.depth} blocks"
    elif cache is not None:
        raise ResultsError(f"{target}: not a run folder; --cache names a copy of a run's cache")
    else:
        cache = open_cache(str(target))
    rows = cache.rows(split)[:max_clips]
    if len(rows) == 0:
        raise ResultsError(f"{cache.url}: no extracted clips in split {split!r}")
    n, _, h, w = cache.feature_shape
    maps = {"raw cache features": 0.0}
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
    fig, axes = plt.subplots(1, len(maps), figsize=(3.4 * len(maps) + 0.8, 3.6), squeeze=False,
                             layout="constrained")  # fmt: skip
    P = n * h * w
    for ax, (title, corr) in zip(axes[0], maps.items(), strict=True):
        im = ax.imshow(corr, cmap=CORR_CMAP, vmin=-1, vmax=1, interpolation="nearest")
        for b in range(1, n):  # frame boundaries: positions are ordered (n, h, w)
            ax.axhline(b * h * w - 0.5, color="black", lw=0.4, alpha=0.6)
            ax.axvline(b * h * w - 0.5, color="black", lw=0.4, alpha=0.6)
        ticks = [f * h * w + (h * w - 1) / 2 for f in range(n)]
        ax.set_xticks(ticks, [str(f) for f in range(n)], fontsize=6)
        ax.set_yticks(ticks, [str(f) for f in range(n)], fontsize=6)
        ax.set_xlabel(f"position by frame (n = {n} frames of {h}×{w})")
        ax.set_ylabel("position by frame")
        ax.set_title(f"{title}\nmean off-diagonal r = {sums[title]:.3f}", fontsize=8)
        ax.set_xlim(-0.5, P - 0.5)
        ax.set_ylim(P - 0.5, -0.5)
    cbar = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85)
    cbar.set_label("Pearson r")
    fig.suptitle(f"{name}\nPearson correlation between positions, mean over {len(rows)} {split} clips",
                 fontsize=8)  # fmt: skip
    fig.get_layout_engine().set(h_pad=0.08)
    save(fig, png)
    plt.close(fig)
    lines = [f"{k:<28} mean off-diagonal correlation {v:.4f}" for k, v in sums.items()]
    return "\n".join(lines + [f"heat maps: {png}", f"vector copy: {png.with_suffix('.pdf')}"])
