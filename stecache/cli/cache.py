"""`stecache info`, `verify`, `export-h5` and `import-h5`: a feature cache itself, read, checked and moved."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("cache")
def info(cache: str):
    """Provenance, counts per split and class, failures, done/total and size on disk of a cache."""
    from ..cache import open_cache

    click.echo(open_cache(cache).describe())


@click.command()
@click.argument("cache")
@click.option("--repair", is_flag=True, help="Mark damaged clips not done, so the same extract redoes them.")
def verify(cache: str, repair: bool):
    """Check every stored byte of CACHE against its checksum; name the damaged clips (exit 1 if any)."""
    from ..cache.verify import verify as run_verify

    report = run_verify(cache, repair=repair)
    lines = report.lines()
    click.echo("\n".join(lines[:-1]))
    if report.bad and not report.repaired or report.problems or report.hash is None:
        damaged = f"{len(report.bad)} damaged clip(s) in {cache}; " if report.bad else ""
        raise click.ClickException(damaged + lines[-1])
    click.echo(lines[-1])


@click.command("export-h5")
@click.argument("cache")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-incomplete", is_flag=True, help="Export a cache that extract has not finished.")
def export_h5(cache: str, out: Path, allow_incomplete: bool):
    """Write a cache's features, labels, ids, splits and attributes to an HDF5 file."""
    from ..cache import export_h5 as run_export

    click.echo(run_export(cache, out, allow_incomplete=allow_incomplete))


@click.command("import-h5")
@click.argument("h5", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("cache")
@click.option("--features", default="features", show_default=True, help="Dataset [N,n,c,h,w] or [N,c].")
@click.option("--labels", default="labels", show_default=True, help="Dataset [N] class index or [N,K].")
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names file, one per line [default: from the file, else 0..K-1].",
)
@click.option("--split", help="Split of every clip when the file has no `split` dataset [default: train].")
def import_h5(h5: Path, cache: str, features: str, labels: str, classes: Path | None, split: str | None):
    """Make a cache from an HDF5 feature file (ours or another tool's).

    Each clip's split comes from a `split` dataset of strings in the file, else from --split.
    """
    from ..cache import import_h5 as run_import

    names = [ln.strip() for ln in classes.read_text().splitlines() if ln.strip()] if classes else None
    c = run_import(h5, cache, features=features, labels=labels, class_names=names, split=split)
    click.echo(f"imported {len(c)} clips {c.feature_shape} into {cache} (fingerprint {c.fingerprint})")
