"""The `stecache` command line: each command parses flags, builds a config and calls one library function.

Library errors (`StecacheError` and its subclasses) become a one-line message and exit code 1 here, in
one place (`Group`). Heavy imports (torch, zarr, av) happen inside the commands so `stecache --help` stays
fast. Every command has a Python equivalent in the module it calls. One module per stage of the data flow:

    data.py     synth, check-data                  (a dataset and its annotations)
    extract.py  backbones, extract                 (stage one: a frozen encoder once into a cache)
    cache.py    info, verify, export-h5, import-h5 (the cache itself)
    train.py    heads, train-head, evaluate, ablate (stage two: heads trained from the cache)
    report.py   report                             (tables and figures)
    deploy.py   predict, export                    (a trained run on new videos, or as one model file)
"""

from __future__ import annotations

import sys
import warnings

import click

from .. import __version__
from ..config import ConfigError
from ..errors import StecacheError
from . import cache, data, deploy, extract, report, train
from .common import rank


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
            if rank() != 0:  # under torchrun every rank fails alike; rank 0 says why, once
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


def _short_message(msg: str, width: int = 280, lines: int = 25) -> str:
    """A message cut to `lines` lines of at most `width` characters (a 2M-label line stays readable)."""
    out = [ln if len(ln) <= width else ln[: width - 3] + "..." for ln in str(msg).splitlines()[:lines]]
    if len(str(msg).splitlines()) > lines:
        out.append("...")
    return "\n".join(out)


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


for command in (
    data.synth, data.check_data,
    extract.backbones, extract.extract,
    cache.info, cache.verify, cache.export_h5, cache.import_h5,
    train.heads, train.train_head, train.evaluate, train.ablate,
    report.report,
    deploy.predict, deploy.export,
):  # fmt: skip
    cli.add_command(command)
