"""`stecache synth` and `stecache check-data`: a dataset, and the flags extract and check-data read it from.

`dataset_from_flags` turns --data or --annotations/--data-root/--classes/... into the library's Dataset.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from .common import SEED


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=SEED, help="Random seed; same seed, same dataset.")
@click.option("--clips", "n_clips", default=300, show_default=True, type=click.IntRange(1, 10**6),
              help="Number of clips in all splits.")  # fmt: skip
@click.option("--multi-label", is_flag=True, help="Clips may carry several labels (TinyVIRAT-like).")
@click.option("--force", is_flag=True, help="Replace the dataset files of a non-empty OUT.")
def synth(out: Path, seed: int, n_clips: int, multi_label: bool, force: bool):
    """Write the embedded synthetic action dataset (H.264 mp4 + annotation lists) to OUT."""
    from ..synth import synthesize

    summary = synthesize(out, n_clips=n_clips, seed=seed, multi_label=multi_label, force=force)
    click.echo(summary)


# ---- the dataset flags of extract and check-data -----------------------------------------------------


def split_files(ctx, param, values: tuple[str, ...]) -> list[tuple[str | None, Path]]:
    out = []
    for v in values:
        split, sep, file = v.partition("=")
        if not sep:  # a bare FILE: the file tells the split (a CSV split column, UCF101/HMDB51 split files)
            split, file = None, v
        if (sep and not split) or not file:
            raise click.BadParameter(f"{v!r}: expected SPLIT=FILE or FILE, e.g. train=lists/train.txt")
        if not Path(file).exists():
            raise click.BadParameter(f"{v!r}: {file} does not exist (expected SPLIT=FILE or FILE)")
        out.append((split, Path(file)))
    return out


def data_roots(ctx, param, values: tuple[str, ...]) -> dict | None:
    """--data-root DIR and/or --data-root SPLIT=DIR -> {None or split: DIR}."""
    out: dict = {}
    for v in values:
        split, sep, folder = v.partition("=")
        key, folder = (split, folder) if sep and not Path(v).is_dir() else (None, v)
        if not Path(folder).is_dir():
            raise click.BadParameter(f"{v!r}: {folder} is not a directory")
        out[key] = Path(folder)
    return out or None


def dataset_from_flags(data, annotations, data_root, classes, multi_label, val_from_train, seed, fmt=None):
    """The Dataset extract / check-data read: --annotations + --data-root, else a `stecache synth` folder."""
    from ..annotations import load_dataset_dir
    from ..annotations import val_from_train as hold_out
    from ..extract import dataset_from_annotations

    if annotations:
        if data is not None or data_root is None:
            raise click.UsageError("--annotations needs --data-root DIR and no --data")
        return dataset_from_annotations(annotations, data_root, classes, multi_label, val_from_train, seed,
                                        fmt)  # fmt: skip
    if data_root is not None or classes is not None or multi_label or fmt:
        raise click.UsageError("--data-root/--classes/--multi-label go with --annotations SPLIT=FILE")
    if data is None:
        data = Path("work/synth")
        if not (data / "classes.txt").exists():
            from ..synth import synthesize

            click.echo(f"no --data: writing the synthetic dataset to {data}", err=True)
            click.echo(synthesize(data), err=True)
    dataset = load_dataset_dir(data)
    return hold_out(dataset, val_from_train, seed) if val_from_train else dataset


ANNOTATION_FORMATS = ("csv", "folder", "hmdb51", "mmaction", "ssv2", "tinyvirat", "ucf101")  # = READERS
_DATASET_OPTIONS = [
    click.option(
        "--multi-label", is_flag=True, help="mmaction2 list clips may carry several labels (multi_class)."
    ),
    click.option(
        "--val-from-train",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help="Hold out this stratified, seeded (--seed) fraction of train as split 'val'.",
    ),
    click.option(
        "--annotation-format",
        type=click.Choice(ANNOTATION_FORMATS),
        help="Format of every --annotations file [default: detected from each file].",
    ),
]


def dataset_options(f):
    """--multi-label, --val-from-train and --annotation-format, alike on extract and check-data."""
    for option in reversed(_DATASET_OPTIONS):
        f = option(f)
    return f


# ---- check-data --------------------------------------------------------------------------------------


@click.command("check-data")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder as `stecache synth` writes it [default: work/synth].")  # fmt: skip
@click.option("--annotations", multiple=True, callback=split_files, metavar="[SPLIT=]FILE",
              help="As for extract.")  # fmt: skip
@click.option("--data-root", multiple=True, callback=data_roots, metavar="[SPLIT=]DIR",
              help="As for extract.")  # fmt: skip
@click.option("--classes", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="As for extract.")  # fmt: skip
@dataset_options
@click.option("--seed", default=0, show_default=True, help="Seed of --val-from-train.")
@click.option("--workers", type=click.IntRange(0), help="Probe processes [default: 2; 0 under 64 clips].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def check_data(data, annotations, data_root, classes, multi_label, val_from_train, annotation_format, seed,
               workers, fmt):  # fmt: skip
    """Dry run of extract: parse the annotations, resolve every path, probe every video; exit 1 on errors.

    Reports per split and class: counts, duplicates, missing, undecodable, partial, paths escaping the data
    root, segments and boxes outside their video. Makes no cache and loads no backbone.
    """
    import json

    from ..checkdata import check_data as run_check
    from ..checkdata import format_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = dataset_from_flags(data, annotations, data_root, classes, multi_label, val_from_train, seed,
                                     annotation_format)  # fmt: skip
    report = run_check(dataset, workers)
    report["warnings"] = [str(w.message) for w in caught]
    if fmt == "json":
        click.echo(json.dumps(report, indent=1))
    else:
        for w in report["warnings"]:
            click.echo(f"warning: {w}")
        click.echo(format_report(report))
    if report["errors"]:
        raise click.ClickException(f"{report['errors']} clip(s) cannot be extracted (above)")
