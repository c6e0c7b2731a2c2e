"""Training from the cache vs end to end with the frozen backbone re-run per batch; data wait; streaming RSS.

1. Per-epoch time of the same training loop (AdamW step of meanFC / Tr d1 / STE d1) fed from cached fp16
   features vs fed from pixels through the frozen backbone every batch (what frameworks do when they
   "freeze the backbone"). Pixels are pre-decoded in RAM, so decoding — which end-to-end training would
   also pay every epoch — is left out: the ratio is a lower bound. Tiny backbone: whole epochs; base
   (ViT-B, 16×224²): single steps of one clip. Interleaved A B A B.
2. Share of the training loop spent waiting for the next batch (`train.train`'s log), in RAM and streamed.
3. Peak RSS of one epoch streamed from a cache ~10× larger than the RAM limit, vs the same split in RAM.
`python -m bench train`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import interleave, machine_line, median, write_section

HEADS = (("meanfc", 0), ("tr", 1), ("ste", 1))


def _loop(head, opt, batches, backbone=None) -> None:
    """One pass of AdamW steps over `batches` ([B, ...] inputs, [B] labels)."""
    head.train()
    for x, y in batches:
        if backbone is not None:
            with torch.no_grad():
                x = backbone(x).clone()  # [B, 3, T, H, W] -> [B, n, c, h, w]; out of inference mode
        else:
            x = x.float()  # stored fp16 -> fp32, as data.to_tensor
        loss = F.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def cache_vs_end_to_end(
    backbone_name, clips: int, batch: int, rounds: int, threads: int, warmup=1
) -> list[str]:
    """Rows `| backbone | head | cache s/epoch | e2e s/epoch | ratio |` (medians of interleaved rounds)."""
    from stecache.backbones import load
    from stecache.heads import build_head

    old_threads, classes = torch.get_num_threads(), 5
    torch.set_num_threads(threads)
    bb = load(backbone_name)
    size, T = bb.preprocess.crop_size, bb.frames
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(clips, 3, T, size, size, generator=g)  # [N, 3, T, H, W] "decoded" clips
    labels = torch.arange(clips) % classes
    with torch.no_grad():
        feats = torch.cat([bb(pixels[i : i + batch]) for i in range(0, clips, batch)]).half()  # the cache
    shape = tuple(feats.shape[1:])
    rows = []
    for name, depth in HEADS:
        head = build_head(name, shape, classes, depth)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
        from_cache = [(feats[i : i + batch], labels[i : i + batch]) for i in range(0, clips, batch)]
        from_pixels = [(pixels[i : i + batch], labels[i : i + batch]) for i in range(0, clips, batch)]
        variants = {
            "cache": lambda h=head, o=opt, b=from_cache: _loop(h, o, b),
            "e2e": lambda h=head, o=opt, b=from_pixels: _loop(h, o, b, bb),
        }
        t = interleave(variants, rounds=rounds, warmup=warmup)
        a, b, canary = median(t["cache"]), median(t["e2e"]), median(t["_canary_gflops"])
        rows.append(f"| {backbone_name} {shape} | {name} d{depth} | {threads} | {a:.3f} | {b:.3f} | "
                    f"**{b / a:.1f}×** | {canary:.0f} |")  # fmt: skip
        print(rows[-1], flush=True)
    torch.set_num_threads(old_threads)
    return rows


def data_wait(tmp: Path, epochs: int = 3) -> list[str]:
    """Rows `| head | mode | loop s | wait s | share |` from train.train's log (240 clips of 8×64×7×7)."""
    from stecache import data as D
    from stecache import train as T

    url = str(tmp / "wait.zarr")
    D.toy_cache(url, n_clips=400, feature_shape=(8, 64, 7, 7), shard_size=16)
    old_threads, rows = torch.get_num_threads(), []
    torch.set_num_threads(1)
    for head, depth in (("ste", 1), ("meanfc", 0)):
        for mode, limit in (("in RAM", None), ("streamed", "2M")):
            cfg = T.TrainConfig(head=head, depth=depth, epochs=epochs, batch_size=32, ram_limit=limit)
            out = tmp / f"wait-{len(rows)}"
            T.train(cfg, url, out, progress=False)
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            wait, loop = sum(e["data_wait_seconds"] for e in log), sum(e["train_seconds"] for e in log)
            ms = (1e3 * loop / len(log), 1e3 * wait / len(log))
            rows.append(
                f"| {head} d{depth} | {mode} | {ms[0]:.0f} | {ms[1]:.1f} | **{100 * wait / loop:.1f} %** |"
            )
            print(rows[-1], flush=True)
    torch.set_num_threads(old_threads)
    return rows


RSS_SCRIPT = """
import json, sys, torch
import matplotlib.pyplot
torch.set_num_threads(1)
from stecache import train as T
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its lazy imports (torch._dynamo) before `base`
def rss_mb(key):  # VmRSS now / VmHWM peak of this process (ru_maxrss would include the parent's, pre-exec)
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024
base = rss_mb("VmRSS")
cfg = T.TrainConfig(head="meanfc", epochs=1, batch_size=64, ram_limit=sys.argv[3] or None, test_views="first")
T.train(cfg, sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"base": base, "peak": rss_mb("VmHWM")}))
"""


def streaming_rss(tmp: Path, limit_mb: int = 8) -> list[str]:
    """Rows `| mode | split MB | RAM limit | RSS growth |`: one epoch, in a fresh process each."""
    from stecache import data as D

    shape = (8, 96, 7, 7)  # 75 KB per clip in fp16
    rows = []
    for n, mode, limit in ((1800, "streamed", f"{limit_mb}M"), (3600, "streamed", f"{limit_mb}M"),
                           (1800, "in RAM", "")):  # fmt: skip
        url = str(tmp / f"big{n}.zarr")
        if not Path(url).exists():
            D.toy_cache(url, n_clips=n, feature_shape=shape, shard_size=8)
        split_mb = 0.6 * n * np.prod(shape) * 2 / 2**20
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, url, tmp / f"rss-{len(rows)}", limit],
                             capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(f"| {mode} | {split_mb:.0f} | {limit or 'none'} | {r['base']:.0f} | {r['peak']:.0f} | "
                    f"**{r['peak'] - r['base']:.0f}** |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(rounds: int = 3, base: bool = True) -> None:
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        # tiny shapes: 1 thread (2 threads fighting other jobs for 2 cores make tiny ops ~10× slower)
        ratio = cache_vs_end_to_end("videomaev2-tiny", clips=64, batch=16, rounds=rounds, threads=1)
        if base:
            ratio += cache_vs_end_to_end("videomaev2", clips=1, batch=1, rounds=1, threads=2, warmup=0)
        wait = data_wait(tmp)
        rss = streaming_rss(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = f"""{machine_line()}; shared CPU, other jobs running: absolute times are noisy, ratios less so.

**Training from the cache vs end to end** (same loop, AdamW, 5 classes; e2e = frozen backbone forward on
every batch, pixels pre-decoded so decoding is *not* counted — real end-to-end training is slower still).
Tiny: 64 clips, batch 16, medians of {rounds} interleaved epochs; base: one step of one clip, measured once
after the base backbone's first (warm-up) forward.

| backbone (features) | head | threads | from cache (s) | end to end (s) | e2e / cache | canary GFLOP/s |
|---|---|---|---|---|---|---|
{chr(10).join(ratio)}

**Waiting for data** (`train.train`, 240 train clips of 8×64×7×7 fp16, batch 32, 3 epochs, 1 thread; a
background thread prepares the next batch; streamed = RAM limit 2 MB, shards of 16 clips; ms per epoch):

| head | mode | training loop | waiting for data | share waiting |
|---|---|---|---|---|
{chr(10).join(wait)}

**Memory while streaming** (meanFC, 1 epoch incl. val/test, fresh process after imports; RSS in MB; the
train split is 10× / 20× the streaming RAM limit; growth = peak − before, incl. head, optimiser, plot):

| mode | train split MB | RAM limit | RSS before | peak RSS | growth |
|---|---|---|---|---|---|
{chr(10).join(rss)}

Total bench time {time.perf_counter() - t0:.0f} s."""
    write_section("Training heads: cache vs end to end, data wait, streaming memory", body)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
