"""Reports derived only from `results.jsonl`: tables (tables.py), figures (figures.py), one HTML (html.py).

`write_report(results, out)` writes `ablation.md`: the named views (Tables I, I+, II, III) where their
runs exist, then a table of EVERY configuration per cache (any user grid), each as markdown + CSV + a
300 dpi PNG / vector PDF figure; `html=True` adds `report.html`, self-contained. Degenerate runs are
flagged († in the cells, listed under the tables). Run: `stecache report runs/results.jsonl --out reports/`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResultsError
from .figures import correlation_maps, mean_off_diagonal, plot_bars, plot_depth, position_correlation
from .html import write_html
from .tables import (
    MULTI_HEADLINE,
    Cell,
    Table,
    backbone_of,
    cache_key,
    dataset_of,
    grid_tables,
    load_results,
    select,
    table_i,
    table_i_plus,
    tables,
)

__all__ = [
    "Cell", "ResultsError", "Table", "backbone_of", "cache_key", "correlation_maps", "dataset_of",
    "degenerate_runs", "grid_tables", "load_results", "mean_off_diagonal", "plot_bars", "plot_depth",
    "position_correlation", "select", "table_i", "table_i_plus", "tables", "write_report",
]  # fmt: skip


def _slug(title: str) -> str:
    head = (title.split(":")[0] if title.startswith("Table") else title).replace("+", " plus")
    return "".join(ch if ch.isalnum() else "_" for ch in head.lower()).strip("_").replace("__", "_")


def degenerate_runs(results: list[dict]) -> list[str]:
    """One line per degenerate run: its name and why."""
    return [f"{r['run']}: {r['degenerate']}" for r in results if r.get("degenerate")]


def write_report(results_path: str | Path, out: str | Path, plots: bool = True, html: bool = False) -> Path:
    """Write ablation.md (+ CSV, PNG/PDF per table; report.html with html=True); returns the markdown."""
    results = load_results(results_path)
    if not results:
        raise ResultsError(f"{results_path}: no run records")
    named, grid = tables(results), grid_tables(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({int(r["seed"]) for r in results})
    multi = any(r.get("multi_label") for r in results)
    deg = degenerate_runs(results)
    intro = (
        f"Derived from `{results_path}` ({len(results)} runs, seeds {seeds}). Test-split metrics in %, "
        "mean ± std (sample std) over seeds; named tables show per cell the setting with the best mean val "
        "selection metric (mAP multi-label, Acc@1 single-label). **Bold**: best in its column with mean − "
        "std above every other cell's mean + std; no bold = within the spread."
        + (f" Multi-label F1 = {MULTI_HEADLINE}, F1@0.5 beside it." if multi else "")
        + (f" † k/n: k of the cell's n runs are degenerate ({len(deg)} in all, listed below)." if deg else "")
    )
    parts = ["# Ablation report\n", intro + "\n"]
    sections, used = [], {}
    for t in named + grid:
        slug = _slug(t.title)
        used[slug] = used.get(slug, 0) + 1
        slug = slug if used[slug] == 1 else f"{slug}_{used[slug]}"
        t.write_csv(out / f"{slug}.csv")
        parts.append(t.markdown() + "\n")
        figs = []
        if plots:
            figs += plot_bars(t, out / f"{slug}.png")
            parts.append(f"![{t.title}]({slug}.png)\n")
            if t.title.startswith("Table III"):
                figs += plot_depth(t, out / f"{slug}_depth.png")
                parts.append(f"![{t.title} depth curve]({slug}_depth.png)\n")
        parts.append(f"CSV: `{slug}.csv`" + (f", vector figure: `{slug}.pdf`" if plots else "") + "\n")
        sections.append((t, figs))
    if deg:
        parts.append("### Degenerate runs\n\n" + "\n".join(f"- † {line}" for line in deg) + "\n")
    md = out / "ablation.md"
    md.write_text("\n".join(parts))
    if html:
        maps = sorted(out.glob("correlation_*.png"))
        write_html(out / "report.html", "Ablation report", intro.replace("**", ""), sections, results, maps)
    return md
