"""One-pass sweep vs the same runs one after another: wall time of Tables I–III's heads on one cache.

A: `sweep.run_sweep` (one loader per data key, every batch to every head). B: `train.train` per config.
Both from the same cache, interleaved A B A B, fresh run folders each time; in-RAM and streamed splits
(streaming = the cache is re-read every epoch, as when it does not fit in RAM). Writes its BENCHMARKS.md
section. `python -m bench sweep`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import numpy as np

from bench.common import interleave, machine_line, median, write_section

SHAPE = (4, 64, 4, 4)  # the tiny backbones' token map (videomaev2-tiny)
Clip = namedtuple("Clip", "clip_id labels split")


def make_cache(path: Path, n: int = 240, k: int = 5) -> str:
    """A cache of n clips with class-dependent features (a learnable toy, tiny-backbone shape)."""
    from stecache.cache import create_cache

    rng = np.random.default_rng(0)
    splits = ["train"] * (n * 2 // 3) + ["val"] * (n // 6) + ["test"] * (n - n * 2 // 3 - n // 6)
    clips = [Clip(f"c{i}", (i % k,), s) for i, s in enumerate(splits)]
    cache = create_cache(str(path), clips=clips, class_names=[f"k{j}" for j in range(k)], multi_label=False,
                         feature_shape=SHAPE, num_views=1, provenance={"backbone": {"name": "bench"}},
                         shard_size=16)  # fmt: skip
    feats = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    feats[np.arange(n), :, np.arange(n) % k] += 0.5
    for a, b in cache.shards():
        cache.write_shard(a, feats[a:b], None, np.ones(b - a, bool), [""] * (b - a))
    return str(path)


def main(epochs: int = 2, rounds: int = 3) -> None:
    from stecache import sweep
    from stecache import train as T

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    url = make_cache(tmp / "cache.zarr")
    rows, counter = [], iter(range(10**6))
    for mode, limit in (("in RAM", None), ("streamed", "1K")):
        base = {"epochs": epochs, "batch_size": 32, "ram_limit": limit}
        jobs = sweep.plan([url], tables="I,II,III", seeds=[0], base=base)

        def one_pass(jobs=jobs):
            out = tmp / f"s{next(counter)}"
            sweep.run_sweep(jobs, out, progress=False, echo=lambda s: None)
            shutil.rmtree(out)

        def sequential(jobs=jobs):
            out = tmp / f"q{next(counter)}"
            for j in jobs:
                T.train(j.cfg, url, runs_root=out, progress=False)
            shutil.rmtree(out)

        t = interleave({"one pass": one_pass, "sequential": sequential}, rounds=rounds, warmup=1)
        a, b = median(t["one pass"]), median(t["sequential"])
        canary = median(t["_canary_gflops"])
        rows.append(f"| {mode} | {len(jobs)} | {a:.2f} | {b:.2f} | **{a / b:.2f}×** | {canary:.0f} |")
    shutil.rmtree(tmp)
    body = (
        f"Tables I–III's heads on one cache (meanFC, Tr d1, STEb+meanFC d1, STE d0–4 = 8 runs, 1 seed), "
        f"{epochs} epochs, batch 32, features {SHAPE} (tiny backbone) × 240 clips; each variant writes "
        f"full run folders (checkpoints, metrics, plot, results line). Medians of {rounds} interleaved "
        f"rounds; "
        f"{machine_line()}. The machine is shared with other jobs: absolute seconds are noisy, the ratio "
        "is the result.\n\n"
        "| splits | runs | one pass (s) | sequential (s) | one pass ÷ sequential | canary GFLOP/s |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    write_section("One-pass sweep vs sequential runs (sweep.py)", body)


if __name__ == "__main__":
    main()
