"""`stecache heads`, `train-head`, `evaluate` and `ablate`: stage two, heads trained from a feature cache.

Head names are literals here (tested equal to `heads.HEADS`), so `--help` needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import DEVICE, RUN, SEED, check_device, warn_degenerate

# = sorted(heads.HEADS) (tested); no torch at --help
HEAD_NAMES = ("attentive", "ep", "linear", "meanfc", "patch", "ste", "stemean", "tr", "vjepa2")
EPOCHS = click.option("--epochs", type=click.IntRange(1, 10**5), default=30, show_default=True,
                      help="Paper: 100.")  # fmt: skip


def _default_cache() -> str:
    """The cache `stecache extract` made last in this working directory."""
    from ..extract import last_cache

    found = last_cache()
    if not found:
        raise click.UsageError(
            "no --cache given and no cache made yet; make one with `stecache synth work/synth` then "
            "`stecache extract` (see README), or pass --cache PATH"
        )
    return str(found)


def _shape(ctx, param, value: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1 or max(shape) > 10**5:
        raise click.BadParameter(f"{value[:60]!r} is not n,c,h,w (4 ints in 1..100000), e.g. 8,768,14,14")
    return shape


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


def _head_option(ctx, param, values: tuple[str, ...]) -> dict:
    return {key: _value(raw) for key, raw in (_key_values(v, "--option patch=[2,2,2]") for v in values)}


def _grid_option(ctx, param, values: tuple[str, ...]) -> dict:
    pairs = [_key_values(item, "--set lr=1e-3,3e-3") for item in values]
    return {key.replace("-", "_"): [_value(v) for v in raw.split(",")] for key, raw in pairs}


@click.command()
@click.option("--describe", is_flag=True, help="Table of parameters (fwd GFLOP/clip) per head × depth 0–4.")
@click.option("--shape", default="8,768,14,14", show_default=True, callback=_shape, help="Features n,c,h,w.")
@click.option("--classes", default=26, show_default=True, type=click.IntRange(1, 10**6),
              help="Number of classes K.")  # fmt: skip
def heads(describe: bool, shape: tuple, classes: int):
    """List the classifier heads (the paper's and the probes); --describe sizes them for a shape."""
    from ..heads import HEADS, describe_table, valid_depths

    if describe:
        click.echo(describe_table(shape, classes))
        return
    for name, cls in HEADS.items():
        d = valid_depths(name)
        doc = cls.__doc__.splitlines()[0].split(": ", 1)[-1]
        click.echo(f"{name:9s} depth {f'{d.start}..{d.stop - 1}':6s} {doc}")


@click.command("train-head")
@click.option("--head", type=click.Choice(HEAD_NAMES), default="ste", show_default=True, help="Head type.")
@click.option("--depth", type=int, default=None,
              help="Blocks in the head [default: 1 for tr/ste/stemean/attentive, 4 for vjepa2, 0 for "
              "meanfc/patch/linear/ep].")  # fmt: skip
@click.option("--cache", "cache", help="Feature cache [default: the one `stecache extract` made last].")
@EPOCHS
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
@DEVICE
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

    from ..metrics import format_table
    from ..train import TrainConfig, train

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


@click.command()
@RUN
@click.option("--split", default="test", show_default=True, help="Split of the cache to evaluate on.")
@click.option("--cache", help="Another copy of the run's cache (must have the same fingerprint).")
@click.option("--per-class", is_flag=True, help="Also print per-class P/R/F1 (multi-label) or acc/P/R.")
@click.option("--device", default="cpu", show_default=True, callback=check_device, help="torch device.")
def evaluate(run: Path, split: str, cache: str | None, per_class: bool, device: str):
    """Metrics of a trained run's best head on a split of its cache."""
    from ..metrics import format_table
    from ..train import evaluate as evaluate_run

    result = evaluate_run(run, split=split, cache=cache, device=device)
    click.echo(format_table(result, result["class_names"] if per_class else None))


@click.command()
@click.argument("caches", nargs=-1, required=True)
@click.option("--tables", help="Presets: I (meanFC/Tr d1/STE d1, every cache), I+ (I's heads beside the "
              "probes linear/attentive/vjepa2/ep, every cache), II, III (first cache).")  # fmt: skip
@click.option("--heads", help="Head specs for every cache, e.g. meanfc,tr:1,ste:0-4.")
@click.option("--seeds", default="0,1,2", show_default=True, callback=_int_list, help="Seeds (comma list).")
@EPOCHS
@click.option("--batch-size", type=click.IntRange(1, 2**20), default=32, show_default=True)
@click.option("--set", "grid", multiple=True, callback=_grid_option, metavar="KEY=V1,V2",
              help="Sweep any TrainConfig field (repeatable), e.g. --set lr=1e-3,3e-3.")  # fmt: skip
@click.option("--memory", help="Memory the heads of one pass may take (e.g. 8G) [default: half of free "
              "RAM, or 90% of free GPU memory]; over it, heads are split into several passes.")  # fmt: skip
@DEVICE
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
    from ..report import write_report
    from ..sweep import plan, run_sweep

    base = {"epochs": epochs, "batch_size": batch_size, "val_split": val_split}
    jobs = plan(list(caches), tables=tables, heads=heads, seeds=seeds, base=base, grid=grid)
    run_sweep(jobs, out, memory=memory, device=device, echo=click.echo, keep_checkpoints=keep_checkpoints)
    md = write_report(out / "results.jsonl", report_dir or out / "report", html=True)
    warn_degenerate(out / "results.jsonl")
    click.echo(f"results: {out / 'results.jsonl'}\nreport: {md} (and {md.with_name('report.html')})")
