"""`stecache report`: tables and figures of a results.jsonl, or Fig. 1 correlation maps of a run or cache."""

from __future__ import annotations

from pathlib import Path

import click

from .common import warn_degenerate


@click.command()
@click.argument("results", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports"), show_default=True,
              help="Folder for ablation.md, the CSVs and the PNGs.")  # fmt: skip
@click.option("--no-plots", is_flag=True, help="Markdown and CSV only.")
@click.option("--correlation", "corr", metavar="RUN_OR_CACHE", type=click.Path(path_type=Path),
              help="Fig. 1 heat maps instead: position correlation of a cache's features (raw) and, for a "
              "run folder, after its head's blocks.")  # fmt: skip
@click.option("--cache", metavar="URL",
              help="With --correlation RUN: a copy of the run's cache elsewhere (same fingerprint and "
              "content) [default: the path recorded in the run].")  # fmt: skip
@click.option("--split", default="val", show_default=True, help="Split averaged over (with --correlation).")
@click.option("--max-clips", default=256, show_default=True, type=click.IntRange(1, 10**7),
              help="Clips averaged over (with --correlation).")  # fmt: skip
@click.option("--html", "as_html", is_flag=True,
              help="Also write OUT/report.html: one self-contained file with every table, figure, "
              "per-class metric, confusion matrix and run configuration.")  # fmt: skip
def report(results: Path | None, out: Path, no_plots: bool, corr: Path | None, cache: str | None, split: str,
           max_clips: int, as_html: bool):  # fmt: skip
    """Tables of RESULTS (a results.jsonl): Tables I, I+, II, III where their runs exist and a table of every
    configuration (any grid); markdown, CSV, 300 dpi PNG + PDF. Or Fig. 1 maps (--correlation)."""
    from ..report import correlation_maps, write_report

    if corr is not None:
        click.echo(correlation_maps(corr, out, split=split, max_clips=max_clips, cache=cache))
        return
    if cache is not None:
        raise click.UsageError("--cache goes with --correlation RUN")
    if results is None:
        raise click.UsageError("give RESULTS (e.g. runs/ablation/results.jsonl) or --correlation RUN")
    if results.is_dir():  # a runs folder: its results.jsonl
        results = results / "results.jsonl"
    md = write_report(results, out, plots=not no_plots, html=as_html)
    click.echo(md.read_text())
    warn_degenerate(results)
    click.echo(f"report: {md}" + (f" and {md.with_name('report.html')}" if as_html else ""))
