"""`stecache backbones` and `stecache extract`: stage one, a frozen encoder once over every clip into a cache.

Backbone names and codecs are literals here (each tested equal to its library table),
so `stecache extract --help` needs neither torch nor zarr.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import DEVICE, SEED, rank
from .data import data_roots, dataset_from_flags, dataset_options, split_files

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


@click.command("backbones")
def backbones():
    """List every backbone entry, its native input protocol and its feature shape [n, c, h, w]."""
    from ..backbones.listing import table

    click.echo(table())


@click.command()
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
    callback=split_files,
    metavar="[SPLIT=]FILE",
    help="Annotation file of a split (mmaction list, TinyVIRAT/SSv2 .json, .csv, UCF101/HMDB51 split "
    "files, class folder); repeat. A bare FILE: its split column / split files tell (data/README.md).",
)
@click.option(
    "--data-root",
    multiple=True,
    callback=data_roots,
    metavar="[SPLIT=]DIR",
    help="Folder the annotation paths are relative to (with --annotations); SPLIT=DIR for one split.",
)
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class list: classes.txt or class_map.json [default: what the format carries, else the sorted "
    "label names over all splits, else 0..K-1].",
)
@dataset_options
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
@click.option(
    "--strict-decode",
    is_flag=True,
    help="Fail a clip whose stream breaks after good frames [default: keep it, partial].",
)
@click.option("--box-margin", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Grow each annotated box by this fraction of its size on every side.")  # fmt: skip
@DEVICE
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
    from ..extract import ExtractConfig, default_cache_path, remember_cache
    from ..extract import extract as run_extract

    dataset = dataset_from_flags(data, annotations, data_root, classes, multi_label, val_from_train, seed,
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
    if rank() != 0:  # every rank returns the same gathered summary
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
