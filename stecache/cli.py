"""The `stecache` command line: each command parses flags, builds a config and calls one library function.

Library errors (`StecacheError` and its subclasses) become a one-line message and exit code 1 here, in
one place. Heavy imports (torch, zarr, av) happen inside the commands so `stecache --help` stays fast.
Every command has a Python equivalent in the module it calls.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .config import ConfigError
from .errors import StecacheError


class Group(click.Group):
    """A click group that turns library errors into one-line messages."""

    def invoke(self, ctx):
        warnings.showwarning = _one_line_warning
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            e.message = _short_message(e.message)
            raise
        except (StecacheError, ConfigError) as e:
            if _rank() != 0:  # under torchrun every rank fails alike; rank 0 says why, once
                sys.exit(1)
            raise click.ClickException(_short_message(str(e))) from None
        except OSError as e:  # the machine's answer about a path: permission, read-only, not a dir, full disk
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(_short_message(f"{where}{e.strerror or e}")) from None
        except MemoryError:
            raise click.ClickException("out of memory; use smaller inputs or --ram-limit/--memory") from None
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed): summaries print on rank 0 only."""
    import os

    return int(os.environ.get("RANK", "0") or 0)

def _short_message(msg: str, width: int = 280, lines: int = 25) -> str:
    """A message cut to `lines` lines of at most `width` characters (a 2M-label line stays readable)."""
    out = [ln if len(ln) <= width else ln[: width - 3] + "..." for ln in str(msg).splitlines()[:lines]]
    if len(str(msg).splitlines()) > lines:
        out.append("...")
    return "\n".join(out)


def _device(ctx, param, value: str | None) -> str | None:
    """A torch device that exists here (cpu, cuda, cuda:N, mps), or a usage error naming the flag."""
    if value is None:
        return None
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a torch device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise click.BadParameter(f"{value!r}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    mps = dev.type == "mps" and torch.backends.mps.is_available()
    if dev.type not in ("cpu", "cuda") and not mps:
        raise click.BadParameter(f"{value!r}: device type {dev.type!r} is not available here")
    return value


SEED = click.IntRange(0, 2**63 - 1)  # numpy and torch seeds: non-negative, 64-bit


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. random backbone weights) as one line on stderr, without the source line."""
    click.echo(f"stecache: warning: {message}", err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="stecache")
def cli():
    """Adapt frozen video encoders to small action datasets with the STE classifier head.

    \b
    Stage one:  stecache extract   — run a frozen encoder once, store patch tokens in a zarr cache
    Stage two:  stecache train-head / evaluate / ablate / report — heads trained from the cache
    Start with: stecache synth work/synth   (a small synthetic dataset of real mp4 files)
    """


# ---- synth -------------------------------------------------------------------------------------------


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=SEED, help="Random seed; same seed, same dataset.")
@click.option("--clips", "n_clips", default=300, show_default=True, type=click.IntRange(1, 10**6),
              help="Number of clips in all splits.")  # fmt: skip
@click.option("--multi-label", is_flag=True, help="Clips may carry several labels (TinyVIRAT-like).")
@click.option("--force", is_flag=True, help="Replace the dataset files of a non-empty OUT.")
def synth(out: Path, seed: int, n_clips: int, multi_label: bool, force: bool):
    """Write the embedded synthetic action dataset (H.264 mp4 + annotation lists) to OUT."""
    from .synth import synthesize

    summary = synthesize(out, n_clips=n_clips, seed=seed, multi_label=multi_label, force=force)
    click.echo(summary)


# ---- heads -------------------------------------------------------------------------------------------


def _shape(ctx, param, value: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1 or max(shape) > 10**5:
        raise click.BadParameter(f"{value[:60]!r} is not n,c,h,w (4 ints in 1..100000), e.g. 8,768,14,14")
    return shape


@cli.command()
@click.option("--describe", is_flag=True, help="Table of parameters (fwd GFLOP/clip) per head × depth 0–4.")
@click.option("--shape", default="8,768,14,14", show_default=True, callback=_shape, help="Features n,c,h,w.")
@click.option("--classes", default=26, show_default=True, type=click.IntRange(1, 10**6),
              help="Number of classes K.")  # fmt: skip
def heads(describe: bool, shape: tuple, classes: int):
    """List the classifier heads (the paper's and the probes); --describe sizes them for a shape."""
    from .heads import HEADS, describe_table, valid_depths

    if describe:
        click.echo(describe_table(shape, classes))
        return
    for name, cls in HEADS.items():
        d = valid_depths(name)
        doc = cls.__doc__.splitlines()[0].split(": ", 1)[-1]
        click.echo(f"{name:9s} depth {f'{d.start}..{d.stop - 1}':6s} {doc}")


# ---- ablate ------------------------------------------------------------------------------------------


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of ints, e.g. 0,1,2") from None
    if not out or not all(SEED.min <= v <= SEED.max for v in out):
        raise click.BadParameter(f"{value[:40]!r}: seeds are integers in 0..2**63-1, e.g. 0,1,2")
    return out


def _key_values(item: str, example: str) -> tuple[str, str]:
    """Split a KEY=VALUE flag value, or say what the flag expects."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{item!r} is not KEY=VALUE, e.g. {example}")
    return key, raw


def _value(raw: str):
    """A flag value as JSON (numbers, lists, true/false) when it parses, else the plain string."""
    import json

    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _grid_option(ctx, param, values: tuple[str, ...]) -> dict:
    pairs = [_key_values(item, "--set lr=1e-3,3e-3") for item in values]
    return {key.replace("-", "_"): [_value(v) for v in raw.split(",")] for key, raw in pairs}


@cli.command()
@click.argument("caches", nargs=-1, required=True)
@click.option("--tables", help="Presets: I (meanFC/Tr d1/STE d1, every cache), I+ (I's heads beside the "
              "probes linear/attentive/vjepa2/ep, every cache), II, III (first cache).")  # fmt: skip
@click.option("--heads", help="Head specs for every cache, e.g. meanfc,tr:1,ste:0-4.")
@click.option("--seeds", default="0,1,2", show_default=True, callback=_int_list, help="Seeds (comma list).")
@click.option("--epochs", type=click.IntRange(1, 10**5), default=30, show_default=True, help="Paper: 100.")
@click.option("--batch-size", type=click.IntRange(1, 2**20), default=32, show_default=True)
@click.option("--set", "grid", multiple=True, callback=_grid_option, metavar="KEY=V1,V2",
              help="Sweep any TrainConfig field (repeatable), e.g. --set lr=1e-3,3e-3.")  # fmt: skip
@click.option("--memory", help="Memory the heads of one pass may take (e.g. 8G) [default: half of free "
              "RAM, or 90% of free GPU memory]; over it, heads are split into several passes.")  # fmt: skip
@click.option("--device", callback=_device, help="torch device [default: cuda if available, else cpu].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/ablation"), show_default=True,
              help="Runs root: one folder per run + results.jsonl.")  # fmt: skip
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Also write the tables here [default: OUT/report].")  # fmt: skip
@click.option("--val-split", default="val", show_default=True, help="Split heads are selected on.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep each finished run's resume checkpoint.")
def ablate(caches, tables, heads, seeds, epochs, batch_size, grid, memory, device, out, report_dir,
           val_split, keep_checkpoints):  # fmt: skip
    """Train a grid of heads (× seeds × settings) on CACHES in one pass per cache; select on val, test once.

    Resumable: finished runs (in OUT/results.jsonl) are skipped; an interrupted pass resumes its heads.
    """
    from .report import write_report
    from .sweep import plan, run_sweep

    base = {"epochs": epochs, "batch_size": batch_size, "val_split": val_split}
    jobs = plan(list(caches), tables=tables, heads=heads, seeds=seeds, base=base, grid=grid)
    run_sweep(jobs, out, memory=memory, device=device, echo=click.echo, keep_checkpoints=keep_checkpoints)
    md = write_report(out / "results.jsonl", report_dir or out / "report", html=True)
    _warn_degenerate(out / "results.jsonl")
    click.echo(f"results: {out / 'results.jsonl'}\nreport: {md} (and {md.with_name('report.html')})")


def _warn_degenerate(results: Path) -> None:
    from .report import degenerate_runs, load_results

    for line in degenerate_runs(load_results(results)):
        click.echo(f"stecache: warning: degenerate run {line}", err=True)


# ---- report ------------------------------------------------------------------------------------------


@cli.command()
@click.argument("results", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports"), show_default=True,
              help="Folder for ablation.md, the CSVs and the PNGs.")  # fmt: skip
@click.option("--no-plots", is_flag=True, help="Markdown and CSV only.")
@click.option("--correlation", "corr", metavar="RUN_OR_CACHE", type=click.Path(path_type=Path),
              help="Fig. 1 heat maps instead: position correlation of a cache's features (raw) and, for a "
              "run folder, after its head's blocks.")  # fmt: skip
@click.option("--split", default="val", show_default=True, help="Split averaged over (with --correlation).")
@click.option("--max-clips", default=256, show_default=True, type=click.IntRange(1, 10**7),
              help="Clips averaged over (with --correlation).")  # fmt: skip
@click.option("--html", "as_html", is_flag=True,
              help="Also write OUT/report.html: one self-contained file with every table, figure, "
              "per-class metric, confusion matrix and run configuration.")  # fmt: skip
def report(results: Path | None, out: Path, no_plots: bool, corr: Path | None, split: str, max_clips: int,
           as_html: bool):  # fmt: skip
    """Tables of RESULTS (a results.jsonl): Tables I, I+, II, III where their runs exist and a table of every
    configuration (any grid); markdown, CSV, 300 dpi PNG + PDF. Or Fig. 1 maps (--correlation)."""
    from .report import correlation_maps, write_report

    if corr is not None:
        click.echo(correlation_maps(corr, out, split=split, max_clips=max_clips))
        return
    if results is None:
        raise click.UsageError("give RESULTS (e.g. runs/ablation/results.jsonl) or --correlation RUN")
    if results.is_dir():  # a runs folder: its results.jsonl
        results = results / "results.jsonl"
    md = write_report(results, out, plots=not no_plots, html=as_html)
    click.echo(md.read_text())
    _warn_degenerate(results)
    click.echo(f"report: {md}" + (f" and {md.with_name('report.html')}" if as_html else ""))


# ---- train-head / evaluate ---------------------------------------------------------------------------

# = sorted(heads.HEADS) (tested); no torch at --help
HEAD_NAMES = ("attentive", "ep", "linear", "meanfc", "patch", "ste", "stemean", "tr", "vjepa2")


def _default_cache() -> str:
    """The cache `stecache extract` made last in this working directory."""
    from .extract import last_cache

    found = last_cache()
    if not found:
        raise click.UsageError(
            "no --cache given and no cache made yet; make one with `stecache synth work/synth` then "
            "`stecache extract` (see README), or pass --cache PATH"
        )
    return str(found)


def _head_option(ctx, param, values: tuple[str, ...]) -> dict:
    return {key: _value(raw) for key, raw in (_key_values(v, "--option patch=[2,2,2]") for v in values)}


@cli.command("train-head")
@click.option("--head", type=click.Choice(HEAD_NAMES), default="ste", show_default=True, help="Head type.")
@click.option("--depth", type=int, default=None,
              help="Blocks in the head [default: 1 for tr/ste/stemean/attentive, 4 for vjepa2, 0 for "
              "meanfc/patch/linear/ep].")  # fmt: skip
@click.option("--cache", "cache", help="Feature cache [default: the one `stecache extract` made last].")
@click.option("--epochs", type=click.IntRange(1, 10**5), default=30, show_default=True, help="Paper: 100.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the head's init and dropout.")
@click.option("--data-seed", type=SEED, help="Seed of the batch order [default: --seed].")
@click.option("--batch-size", type=click.IntRange(1, 2**20), default=32, show_default=True,
              help="Global batch.")  # fmt: skip
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Base lr per 256 clips (scaled).")
@click.option("--warmup-epochs", type=click.IntRange(0, 10**5), default=5, show_default=True,
              help="Linear warm-up epochs, capped at epochs//5.")  # fmt: skip
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--no-balance", is_flag=True, help="Uniform sampling instead of the class-balanced sampler.")
@click.option("--option", "options", multiple=True, callback=_head_option, metavar="KEY=VALUE",
              help="Head option (repeatable), e.g. --option patch=[2,2,2] --option dropout=0.")  # fmt: skip
@click.option("--ram-limit", help="Max bytes a split may take in RAM (e.g. 4G); above it, stream.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder [default: RUNS/NAME]; its parent gets results.jsonl.")  # fmt: skip
@click.option("--name", help="Run name under --runs [default: derived from the settings].")
@click.option("--runs", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Runs root (holds results.jsonl).")  # fmt: skip
@click.option("--resume/--no-resume", default=None,
              help="Resume the run's checkpoint [default: if its config matches] / start over.")  # fmt: skip
@click.option("--val-split", default="val", show_default=True, help="Split the best epoch is selected on.")
@click.option("--device", callback=_device, help="torch device [default: cuda if available, else cpu].")
@click.option("--keep-checkpoints", is_flag=True,
              help="Keep the finished run's resume checkpoint [default: weights and logs only].")  # fmt: skip
@click.option("--resident", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Keep the training features in GPU memory (auto: on CUDA when they fit in half the free"
                   " memory); results do not depend on it.")  # fmt: skip
def train_head(head, depth, cache, epochs, seed, data_seed, batch_size, lr, warmup_epochs, weight_decay,
               no_balance, options, ram_limit, out, name, runs, resume, val_split, device,
               keep_checkpoints, resident):  # fmt: skip
    """Train one classifier head from a feature cache into a run folder (paper §III-B protocol)."""
    import logging

    from .metrics import format_table
    from .train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # RAM or streaming, epochs, resume

    cfg = TrainConfig(head=head, depth=depth, head_options=options, epochs=epochs, seed=seed,
                      data_seed=data_seed, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs,
                      weight_decay=weight_decay, balanced=not no_balance, ram_limit=ram_limit,
                      val_split=val_split)  # fmt: skip
    out = out or (runs / name if name else None)
    if cache is None:
        cache = _default_cache()
        click.echo(f"no --cache: using {cache} (the cache `stecache extract` made last)", err=True)
    else:
        click.echo(f"cache: {cache}", err=True)
    metrics = train(cfg, cache, out, runs_root=runs, resume=resume, device=device,
                    keep_checkpoints=keep_checkpoints, resident=resident)  # fmt: skip
    if metrics:  # rank 0 only
        split = "test" if "test" in metrics else "val"
        res = {"run": metrics["run_dir"], "split": split, "clips": metrics[f"{split}_clips"],
               "metrics": metrics[split]}  # fmt: skip
        if f"{split}_tuned" in metrics:
            res["tuned"] = metrics[f"{split}_tuned"]
        click.echo(format_table(res))
        if metrics.get("degenerate"):
            click.echo(f"stecache: warning: degenerate run: {metrics['degenerate']}", err=True)
        click.echo(f"run folder: {metrics['run_dir']}")


@cli.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split of the cache to evaluate on.")
@click.option("--cache", help="Another copy of the run's cache (must have the same fingerprint).")
@click.option("--per-class", is_flag=True, help="Also print per-class P/R/F1 (multi-label) or acc/P/R.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help="torch device.")
def evaluate(run: Path, split: str, cache: str | None, per_class: bool, device: str):
    """Metrics of a trained run's best head on a split of its cache."""
    from .metrics import format_table
    from .train import evaluate as evaluate_run

    result = evaluate_run(run, split=split, cache=cache, device=device)
    click.echo(format_table(result, result["class_names"] if per_class else None))


# ---- extract / info / export-h5 / import-h5 ----------------------------------------------------------

BACKBONE_NAMES = ("uniformerv2", "uniformerv2-tiny", "videomaev2", "videomaev2-tiny")  # = BACKBONES (tested)
CODEC_NAMES = ("lz4", "none", "zstd")  # = cache.CODECS (tested); literal so --help needs no zarr


BACKBONE_PREFIXES = ("image:", "hf:", "timm:")  # = backbones.PREFIXES (tested)


def _backbone_name(ctx, param, value: str) -> str:
    open_family = any(value.startswith(p) and len(value) > len(p) for p in BACKBONE_PREFIXES)
    if value not in BACKBONE_NAMES and not open_family:
        raise click.BadParameter(
            f"{value!r}: choose one of {', '.join(BACKBONE_NAMES)}, image:<dir>, hf:<dir> or timm:<model>"
        )
    return value


def _checkpoint(ctx, param, value: str | None) -> str | Path | None:
    if value is None or value.startswith("hf://"):
        return value
    if not Path(value).expanduser().exists():
        raise click.BadParameter(f"{value}: no such file or directory (or use hf://<org>/<repo>/<path>)")
    return Path(value)


def _split_files(ctx, param, values: tuple[str, ...]) -> list[tuple[str | None, Path]]:
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


def _data_roots(ctx, param, values: tuple[str, ...]) -> dict | None:
    """--data-root DIR and/or --data-root SPLIT=DIR -> {None or split: DIR}."""
    out: dict = {}
    for v in values:
        split, sep, folder = v.partition("=")
        key, folder = (split, folder) if sep and not Path(v).is_dir() else (None, v)
        if not Path(folder).is_dir():
            raise click.BadParameter(f"{v!r}: {folder} is not a directory")
        out[key] = Path(folder)
    return out or None


def _dataset(data, annotations, data_root, classes, multi_label, val_from_train, seed, fmt=None):
    """The Dataset extract / check-data read: --annotations + --data-root, else a `stecache synth` folder."""
    from .annotations import load_dataset_dir
    from .annotations import val_from_train as hold_out
    from .extract import dataset_from_annotations

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
            from .synth import synthesize

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


def _dataset_options(f):
    for option in reversed(_DATASET_OPTIONS):
        f = option(f)
    return f


@cli.command()
@click.option(
    "--backbone",
    required=True,
    callback=_backbone_name,
    help=f"Encoder: {', '.join(BACKBONE_NAMES)}, image:<dir> (transformers image model per frame), "
    "hf:<dir> (transformers video model), timm:<model> (per frame); see `stecache backbones`.",
)
@click.option(
    "--checkpoint",
    callback=_checkpoint,
    help="Weights file/dir, or hf://<org>/<repo>/<path> from the Hugging Face hub cache "
    "[default: random weights, for tests and demos].",
)
@click.option(
    "--frames",
    type=click.IntRange(1),
    help="Frames per clip T [default: the backbone's native protocol; the paper uses 16].",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset folder as `stecache synth` writes it [default: work/synth, made if missing].",
)
@click.option(
    "--annotations",
    multiple=True,
    callback=_split_files,
    metavar="[SPLIT=]FILE",
    help="Annotation file of a split (mmaction list, TinyVIRAT/SSv2 .json, .csv, UCF101/HMDB51 split "
    "files, class folder); repeat. A bare FILE: its split column / split files tell (data/README.md).",
)
@click.option(
    "--data-root",
    multiple=True,
    callback=_data_roots,
    metavar="[SPLIT=]DIR",
    help="Folder the annotation paths are relative to (with --annotations); SPLIT=DIR for one split.",
)
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class list: classes.txt or class_map.json [default: what the format carries, else the sorted "
    "label names over all splits, else 0..K-1].",
)
@_dataset_options
@click.option("--cache", "cache_url", help="Output zarr path or URL [default: work/cache-<backbone>.zarr].")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    help="Views per forward (= clips without --test-views/--train-views) [default: the fastest of a few"
    " sizes, timed on the first clips].",
)
@click.option("--workers", type=click.IntRange(0, 256),
              help="Decoding processes [default: min(2, cpus) on CPU, cpus-2 (<= 16) on GPU].")  # fmt: skip
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--test-views", is_flag=True, help="Store the backbone's test protocol views (clips x crops).")
@click.option(
    "--train-views",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Also store K augmented views per clip (random frames, crop, flip).",
)
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of augmented views and --val-from-train.")  # fmt: skip
@click.option(
    "--codec",
    type=click.Choice(CODEC_NAMES),
    default="none",
    show_default=True,
    help="Feature compression of a new cache (fp16 features barely compress; see BENCHMARKS.md).",
)
@click.option("--shard-size", type=click.IntRange(1, 2**20),
              help="Clips per shard file [default: ~128 MB shards].")  # fmt: skip
@click.option("--allow-failures", is_flag=True, help="Exit 0 even if some clips cannot be decoded.")
@click.option("--strict-decode", is_flag=True,
              help="Fail a clip whose stream breaks after good frames [default: keep it, partial].")
@click.option("--box-margin", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Grow each annotated box by this fraction of its size on every side.")  # fmt: skip
@click.option("--device", callback=_device, help="torch device [default: cuda if available, else cpu].")
@click.option("--log-every", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="Seconds between progress lines when stderr is not a tty (nohup, scheduler).")  # fmt: skip
def extract(
    backbone,
    checkpoint,
    frames,
    data,
    annotations,
    data_root,
    classes,
    multi_label,
    val_from_train,
    annotation_format,
    cache_url,
    batch_size,
    workers,
    dtype,
    test_views,
    train_views,
    seed,
    codec,
    shard_size,
    allow_failures,
    strict_decode,
    box_margin,
    device,
    log_every,
):
    """Run a frozen encoder once over every clip into a resumable zarr feature cache.

    Re-running the same command resumes (done clips are skipped). Under `torchrun --nproc_per_node=K`
    the ranks share the work and write one cache.
    """
    from .extract import ExtractConfig, default_cache_path, remember_cache
    from .extract import extract as run_extract

    dataset = _dataset(data, annotations, data_root, classes, multi_label, val_from_train, seed,
                       annotation_format)  # fmt: skip
    cache_url = cache_url or str(default_cache_path(backbone))
    cfg = ExtractConfig(
        batch_size=batch_size,
        workers=workers,
        dtype=dtype,
        test_views=test_views,
        train_views=train_views,
        seed=seed,
        codec=codec,
        shard_size=shard_size,
        allow_failures=allow_failures,
        strict_decode=strict_decode,
        box_margin=box_margin,
        device=device,
        log_every=log_every,
    )
    s = run_extract(dataset, cache_url, backbone, checkpoint=checkpoint, cfg=cfg, frames=frames)
    if "://" not in str(cache_url):  # only a cache that extract finished is remembered
        remember_cache(cache_url)
    if _rank() != 0:  # every rank returns the same gathered summary
        return
    click.echo(
        f"{s['cache']}: {s['done']}/{s['clips']} clips done ({s['extracted']} extracted now, "
        f"{s['already_done']} before, {len(s['failed'])} failed) in {s['seconds']:.1f} s"
        + (f"; per rank {'+'.join(map(str, s['per_rank']))}" if len(s["per_rank"]) > 1 else "")
    )
    if s.get("batch"):
        b = s["batch"]
        timed = "".join(f"; {k}: {v:g} ms/view" for k, v in b["per_view_ms"].items())
        click.echo(f"forward batch {b['batch_size']} views ({b['chosen']}{timed})")
    for clip_id, err in s["failed"]:
        click.echo(f"  failed {clip_id}: {err}")
    for clip_id, note in s.get("partial", []):
        click.echo(f"  partial {clip_id}: {note} (stream broke; --strict-decode fails such clips)")


@cli.command("check-data")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder as `stecache synth` writes it [default: work/synth].")  # fmt: skip
@click.option("--annotations", multiple=True, callback=_split_files, metavar="[SPLIT=]FILE",
              help="As for extract.")  # fmt: skip
@click.option("--data-root", multiple=True, callback=_data_roots, metavar="[SPLIT=]DIR",
              help="As for extract.")  # fmt: skip
@click.option("--classes", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="As for extract.")  # fmt: skip
@_dataset_options
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

    from .checkdata import check_data as run_check
    from .checkdata import format_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _dataset(data, annotations, data_root, classes, multi_label, val_from_train, seed,
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


@cli.command("backbones")
def backbones_cmd():
    """List every backbone entry, its native input protocol and its feature shape [n, c, h, w]."""
    from .backbones.listing import table

    click.echo(table())


@cli.command()
@click.argument("cache")
def info(cache: str):
    """Provenance, counts per split and class, failures, done/total and size on disk of a cache."""
    from .cache import open_cache

    click.echo(open_cache(cache).describe())


@cli.command()
@click.argument("cache")
@click.option("--repair", is_flag=True, help="Mark damaged clips not done, so the same extract redoes them.")
def verify(cache: str, repair: bool):
    """Check every stored byte of CACHE against its checksum; name the damaged clips (exit 1 if any)."""
    from .cache.verify import verify as run_verify

    report = run_verify(cache, repair=repair)
    lines = report.lines()
    click.echo("\n".join(lines[:-1]))
    if report.bad and not report.repaired or report.problems or report.hash is None:
        damaged = f"{len(report.bad)} damaged clip(s) in {cache}; " if report.bad else ""
        raise click.ClickException(damaged + lines[-1])
    click.echo(lines[-1])


@cli.command("export-h5")
@click.argument("cache")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-incomplete", is_flag=True, help="Export a cache that extract has not finished.")
def export_h5(cache: str, out: Path, allow_incomplete: bool):
    """Write a cache's features, labels, ids, splits and attributes to an HDF5 file."""
    from .cache import export_h5 as run_export

    click.echo(run_export(cache, out, allow_incomplete=allow_incomplete))


@cli.command("import-h5")
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
    from .cache import import_h5 as run_import

    names = [ln.strip() for ln in classes.read_text().splitlines() if ln.strip()] if classes else None
    c = run_import(h5, cache, features=features, labels=labels, class_names=names, split=split)
    click.echo(f"imported {len(c)} clips {c.feature_shape} into {cache} (fingerprint {c.fingerprint})")


# ---- predict / export --------------------------------------------------------------------------------

_RUN = click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
_CHECKPOINT = click.option(
    "--checkpoint",
    type=click.Path(exists=True, path_type=Path),
    help="Backbone weights the run's cache was extracted with (sha256 checked); not for random weights.",
)


@cli.command()
@_RUN
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
@click.option("--device", callback=_device, help="torch device [default: cuda if available, else cpu].")
def predict(run, videos, top_k, fmt, window, stride, out, checkpoint, batch_size, workers, device):
    """Classify VIDEOS (files or folders) with RUN's backbone + head, end to end.

    Each video is sampled and cropped as RUN's cache was, and probabilities are averaged over its test
    views. A video that cannot be decoded is reported and skipped; the exit code is 1 if any failed.
    With --window, each video gets a timeline of windows (CSV, JSON and PNG in --out).
    """
    import json

    import torch

    from . import predict as P
    from . import timeline as TL

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


@cli.command()
@_RUN
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
    from .export import export as run_export

    if out is not None and out.exists() and not out.is_file():
        raise click.ClickException(f"--out {out}: exists and is not a regular file; give a new file path")
    model, meta = run_export(run, fmt, out, head_only, checkpoint)
    click.echo(f"wrote {model}, {meta} (preprocessing, class names) and {meta.parent / 'preprocess.py'}")


def main():  # pragma: no cover
    cli()
