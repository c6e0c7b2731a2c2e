"""The `stecache` command line: each command parses flags, builds a config and calls one library function.

Library errors (`StecacheError` and its subclasses) become a one-line message and exit code 1 here, in
one place. Heavy imports (torch, zarr, av) happen inside the commands so `stecache --help` stays fast.
Every command has a Python equivalent in the module it calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import StecacheError


class Group(click.Group):
    """A click group that turns library errors into one-line messages."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StecacheError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)


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
@click.option("--seed", default=0, show_default=True, help="Random seed; same seed, same dataset.")
@click.option("--clips", "n_clips", default=300, show_default=True, help="Number of clips in all splits.")
@click.option("--multi-label", is_flag=True, help="Clips may carry several labels (TinyVIRAT-like).")
def synth(out: Path, seed: int, n_clips: int, multi_label: bool):
    """Write the embedded synthetic action dataset (H.264 mp4 + annotation lists) to OUT."""
    from .synth import synthesize

    summary = synthesize(out, n_clips=n_clips, seed=seed, multi_label=multi_label)
    click.echo(summary)


def main():  # pragma: no cover
    cli()
