"""Run every benchmark (`make bench`), or those named: `python -m bench heads cache`."""

import importlib
import pkgutil
import sys

import torch

import bench

torch.set_num_threads(2)
names = sys.argv[1:] or sorted(
    m.name.removeprefix("bench_") for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
)
for name in names:
    print(f"== bench_{name}")
    importlib.import_module(f"bench.bench_{name}").main()
