"""`python -m stecache.cli ...` (and `torchrun -m stecache.cli extract ...`) = `stecache ...`."""

from . import cli

cli()
