"""`stecache predict` and `stecache export`: a trained run end to end on new videos, or as one model file."""

from __future__ import annotations

from pathlib import Path

import click

from .common import DEVICE, RUN

_CHECKPOINT = click.option(
    "--checkpoint",
    type=click.Path(exists=True, path_type=Path),
    help="Backbone weights the run's cache was extracted with (sha256 checked); not for random weights.",
)


@click.command()
@RUN
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 10**6),
              help="Classes per video.")  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@click.option(
    "--window",
    type=click.FloatRange(0, min_open=True),
    help="Seconds per window: slide over each (long) video and write a timeline.",
)
@click.option(
    "--stride",
    type=click.FloatRange(0, min_open=True),
    help="Seconds between window starts [default: window/2].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the timeline CSV/JSON/PNG files [default: RUN/timelines].",
)
@_CHECKPOINT
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 4096),
              help="Videos per batch.")  # fmt: skip
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, 256),
              help="Decoding processes.")  # fmt: skip
@DEVICE
def predict(run, videos, top_k, fmt, window, stride, out, checkpoint, batch_size, workers, device):
    """Classify VIDEOS (files or folders) with RUN's backbone + head, end to end.

    Each video is sampled and cropped as RUN's cache was, and probabilities are averaged over its test
    views. A video that cannot be decoded is reported and skipped; the exit code is 1 if any failed.
    With --window, each video gets a timeline of windows (CSV, JSON and PNG in --out).
    """
    import json

    import torch

    from .. import predict as P
    from .. import timeline as TL

    if (stride or out) and not window:
        raise click.UsageError("--stride and --out need --window")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pred = P.load_predictor(run, checkpoint, device)
    paths = P.expand_inputs(list(videos))
    if window:
        results = []
        for r in TL.timeline_files(pred, paths, window, stride or window / 2, out or Path(run) / "timelines"):
            results.append(r)
            if r["error"]:
                click.echo(f"skipped {r['path']}: {r['error']}", err=True)
                continue
            if fmt == "table":
                click.echo(TL.format_segments(r["record"]))
            click.echo(f"  wrote {', '.join(map(str, r['files']))}", err=fmt != "table")
        records = [r["record"] for r in results if r["record"]]
        if fmt == "json":
            click.echo(json.dumps(records, indent=2))
        elif fmt == "csv":
            click.echo(TL.timelines_csv(records))
    else:
        results = P.predict_files(pred, paths, batch_size, workers)
        click.echo(P.format_rows(P.rows(pred, results, top_k), fmt, pred.multi_label, pred.threshold))
    failed = [r for r in results if r["error"]]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(paths)} video(s) failed and were skipped (above)")


@click.command()
@RUN
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torchscript", "onnx"]),
    default="torchscript",
    show_default=True,
    help="onnx needs `pip install 'stecache[onnx]'`.",
)
@click.option("--head-only", is_flag=True, help="Export the head alone (input: features [B, n, c, h, w]).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file [default: RUN/export/model.pt|.onnx, head.pt|.onnx with --head-only]; "
    "the JSON of constants goes beside it.",
)
@_CHECKPOINT
def export(run, fmt, head_only, out, checkpoint):
    """Write RUN's backbone + head as one TorchScript or ONNX model, runnable without stecache.

    Beside it: the JSON of constants (class names, a machine-readable `preprocess` section, also embedded
    in the model file) and preprocess.py (numpy + PyAV) that turns a video into the model's exact input.
    """
    from ..export import export as run_export

    if out is not None and out.exists() and not out.is_file():
        raise click.ClickException(f"--out {out}: exists and is not a regular file; give a new file path")
    model, meta = run_export(run, fmt, out, head_only, checkpoint)
    click.echo(f"wrote {model}, {meta} (preprocessing, class names) and {meta.parent / 'preprocess.py'}")
