"""`python -m stecache ...` = `stecache ...`."""

from .cli import cli

cli()
