"""Many head configurations trained in one pass over a cache: the ablation engine behind `stecache ablate`.

`plan` expands a grid (Tables I–III presets or head specs × seeds × any TrainConfig field) over caches.
`run_sweep` groups the jobs by cache and data key (the fields that fix the batch stream: seed, batch size,
epochs, sampler, views) and, within a group, by a memory cap; each group is ONE loader whose every batch goes
to every head, each with its own AdamW, lr schedule, loss and torch RNG stream (swapped in around its step),
so a head trains exactly as `train.train` would alone. Run folders and the results.jsonl line are the
train package's (same names, same `finish`: best epoch on val, test once). Finished runs are skipped; a killed
group resumes from its heads' resume.safetensors; --out and the run folders are locked while written.
Python: `run_sweep(plan(["c.zarr"], tables="I,II,III"), "runs/x")`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data as D
from . import metrics as M
from . import runio, tb
from . import train as T
from .config import fingerprint
from .errors import SweepError
from .heads import HEADS

# Table presets: head specs; Tables I and I+ run on every cache, II and III on the first cache only.
# The patch_base_classifier row of Table II is `ste` at depth 0 (the same head; report.py maps it).
# I+: today's frozen-encoder probes beside Table I's heads (the same protocol and seeds).
TABLES = {
    "I": ("meanfc", "tr:1", "ste:1"),
    "I+": ("meanfc", "tr:1", "ste:1", "linear", "attentive:1", "vjepa2", "ep"),
    "II": ("meanfc", "ste:0", "stemean:1", "ste:1"),
    "III": ("ste:0-4",),
}
# TrainConfig fields that only change a head, not the batches it sees; every other field is a data key
HEAD_FIELDS = {"head", "depth", "head_options", "lr", "warmup_epochs", "weight_decay", "tune_threshold"}


@dataclass(frozen=True)
class Job:
    """One run of the sweep: a TrainConfig on a cache."""

    cache: str
    cfg: T.TrainConfig


# ---- the grid ------------------------------------------------------------------------------------------


def parse_heads(spec: str | list[str]) -> list[tuple[str, int | None]]:
    """Head specs to (name, depth): meanfc,tr:1,ste:0-4 -> (meanfc, None), (tr, 1), (ste, 0) ... (ste, 4)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in (s.strip() for s in items if s.strip()):
        name, _, depths = item.partition(":")
        if name not in HEADS:
            raise SweepError(f"head spec {item!r}: unknown head {name!r}; known: {', '.join(sorted(HEADS))}")
        try:
            if not depths:
                out.append((name, None))
            elif "-" in depths:
                lo, hi = (int(v) for v in depths.split("-"))
                if lo > hi:
                    raise ValueError
                out += [(name, d) for d in range(lo, hi + 1)]
            else:
                out.append((name, int(depths)))
        except ValueError:
            msg = f"head spec {item!r}: expected NAME, NAME:DEPTH or NAME:LO-HI (e.g. ste:0-4)"
            raise SweepError(msg) from None
    return out


def plan(
    caches: list[str],
    tables: str | None = None,
    heads: str | list[str] | None = None,
    seeds: list[int] = (0,),
    base: dict | None = None,
    grid: dict[str, list] | None = None,
) -> list[Job]:
    """Jobs for table presets (I, I+ on every cache, II/III on the first) and/or head specs × seeds × grid."""
    from .heads import valid_depths

    if not caches:
        raise SweepError("no cache given; name one or more caches made by `stecache extract`")
    names = [t.strip().upper() for t in tables.split(",") if t.strip()] if tables else []
    bad = [t for t in names if t not in TABLES]
    if bad:
        raise SweepError(f"--tables {','.join(bad)}: known tables are {', '.join(TABLES)}")
    extra = parse_heads(heads) if heads else []
    if not names and not extra:
        raise SweepError("nothing to sweep: give --tables (e.g. I,II,III) or --heads (e.g. meanfc,ste:0-4)")
    grid = dict(grid or {})
    fields = set(T.TrainConfig.__dataclass_fields__)
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise SweepError(f"--set {unknown}: not TrainConfig fields; known: {', '.join(sorted(fields))}")
    fixed = {"head": "--heads", "depth": "--heads (e.g. ste:0-4)", "seed": "--seeds"}
    for key in sorted(set(grid) & set(fixed)):  # plan sets these from its own flags: --set would be ignored
        raise SweepError(f"--set {key}=...: {key} is not varied by --set; use {fixed[key]}")
    jobs: dict[tuple, Job] = {}
    for i, cache in enumerate(caches):
        specs = [h for t in names if t in ("I", "I+") or i == 0 for h in parse_heads(list(TABLES[t]))] + extra
        for (head, depth), seed, values in itertools.product(specs, seeds, itertools.product(*grid.values())):
            depth = valid_depths(head)[0] if depth is None else depth
            try:
                cfg = T.TrainConfig.from_dict({**(base or {}), **dict(zip(grid, values, strict=True)),
                                              "head": head, "depth": depth, "seed": int(seed)})  # fmt: skip
            except (TypeError, ValueError) as e:
                raise SweepError(f"bad sweep setting: {e}") from None
            jobs.setdefault((cache, fingerprint(cfg.to_dict())), Job(str(cache), cfg))
    return list(jobs.values())


def data_key(cfg: T.TrainConfig) -> str:
    """The fields that fix the batch stream; jobs with equal keys on one cache can share one loader."""
    key = {k: v for k, v in cfg.to_dict().items() if k not in HEAD_FIELDS | {"seed", "data_seed"}}
    return fingerprint(key | {"batch_seed": cfg.batch_seed})  # seeds share a pass when data_seed is set


# ---- memory --------------------------------------------------------------------------------------------


def estimate_bytes(cfg: T.TrainConfig, feature_shape, num_classes: int) -> tuple[int, int]:
    """(persistent, transient) bytes of one head: params + 2 AdamW moments; grads + saved activations.

    Measured by a forward on the meta device that adds up every tensor autograd saves for the backward
    (an upper bound: saved weights are counted too). Heads step one after another, so transients do not add.
    """
    from .heads import build_head

    with torch.device("meta"):
        head = build_head(cfg.head, feature_shape, num_classes, cfg.depth, **cfg.head_options)
        x = torch.empty(cfg.batch_size, *feature_shape)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            head(x)
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel: a coarse bound instead
        saved[0] = 4 * x.numel() * (4 + 16 * (cfg.depth or 0))
    params = sum(p.numel() * 4 for p in head.parameters())
    return 3 * params, params + saved[0]


def group_by_memory(sizes: list[tuple[int, int]], cap: int) -> list[list[int]]:
    """Indices packed first-fit (largest first) so that Σ persistent + max transient ≤ cap per group."""
    groups: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sum(sizes[i])):
        for g in groups:
            if sum(sizes[j][0] for j in g + [i]) + max(sizes[j][1] for j in g + [i]) <= cap:
                g.append(i)
                break
        else:
            groups.append([i])  # alone, even if over the cap (then it is a plain single run)
    return [sorted(g) for g in groups]


def default_memory(device) -> int:
    """Bytes heads may take: 90 % of free GPU memory, else data.ram_limit (half of free RAM)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0] * 0.9)
    return D.ram_limit()


# ---- one pass ------------------------------------------------------------------------------------------


@dataclass
class HeadRun:
    """One head's training state inside a shared pass: what `train.train` keeps in local variables."""

    cfg: T.TrainConfig
    out: Path
    head: torch.nn.Module
    opt: torch.optim.Optimizer
    rng: torch.Tensor  # this head's CPU RNG state (dropout, drop-path), swapped in around its steps
    cuda_rng: torch.Tensor | None = None
    history: list = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = -1
    start: int = 0
    # this epoch's summed loss, kept on the device (read back once an epoch: no host sync a step), and clips
    loss_total: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    clips: int = 0

    def step(self, xb: torch.Tensor, yb: torch.Tensor, n: int, lr: float, multi: bool, where=(0, 0, ())):
        """One optimiser step on batch xb [b, n, c, h, w] with this head's own RNG stream; `where`:
        (epoch, batch, clip ids) named if the loss is not finite (checked here on CPU; on CUDA once an
        epoch by train_group, as a per-step check would sync)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, xb.device)
        loss = T.loss_fn(self.head(xb), yb, multi)
        if xb.device.type != "cuda" and not torch.isfinite(loss):  # CPU: free; CUDA: once an epoch
            raise T.non_finite_loss(where[0], where[1], loss, xb, where[2])
        (loss * 1 / n).backward()  # as train.train with world size 1
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state(xb.device)
        self.loss_total += loss.detach()
        self.clips += n


def make_run(cfg: T.TrainConfig, cache, out: Path, device, failed: int) -> HeadRun:
    """Build head + AdamW exactly as train.train does; resume from the folder's checkpoint when it is this
    run's (validated first). The caller holds the folder's lock."""
    head = T.make_head(cfg, cache).to(device)
    opt = T.make_optimizer(head, cfg)
    cuda = T.cuda_rng_state(device)
    run = HeadRun(cfg, out, head, opt, torch.get_rng_state(), cuda)
    identity = T.run_identity(cfg, cache)
    state = T.resume_checkpoint(out, identity, None)
    T.write_run_config(out, cfg, cache, failed)
    if state is not None:
        *got, cuda_rng = T.restore(state, head, opt, identity, cfg, cuda=True)
        run.rng, run.history, run.best, run.best_epoch, run.start = got
        if cuda is not None and cuda_rng is not None:
            run.cuda_rng = cuda_rng
    return run


def train_group(runs: list[HeadRun], cache, train_split, val_split, device, progress: bool = True) -> None:
    """Train heads sharing one data key side by side: one loader per epoch, every batch to every head."""
    from tqdm import tqdm

    cfg, multi = runs[0].cfg, bool(cache.multi_label)
    assert len({r.start for r in runs}) == 1 and len({data_key(r.cfg) for r in runs}) == 1
    targets = torch.from_numpy(train_split.targets(multi))
    weights = D.sample_weights(train_split.labels) if cfg.balanced else None
    steps = math.ceil(len(train_split) / cfg.batch_size)
    ahead = None  # the next epoch's batches, read during this epoch's validation
    for epoch in range(runs[0].start, cfg.epochs):
        t0, wait = time.perf_counter(), 0.0
        it = ahead or T.epoch_batches(train_split, cfg, epoch, weights)
        for r in runs:
            r.head.train()
            r.loss_total, r.clips = torch.zeros((), dtype=torch.float64, device=device), 0
        for i in tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs} × {len(runs)} heads", leave=False,
                      disable=None if progress else True):  # fmt: skip
            tw = time.perf_counter()
            pos, x = next(it)
            wait += time.perf_counter() - tw
            xb, yb = D.to_tensor(x[:, 0], device), targets[pos].to(device)
            where = (epoch, i, cache.clip_id[train_split.rows[pos]])
            for r in runs:
                r.step(xb, yb, len(pos), T.lr_at(r.cfg, epoch * steps + i, steps), multi, where)
        losses = [T.epoch_loss(r.loss_total, epoch) / r.clips for r in runs]  # NonFiniteLoss if NaN/inf
        train_seconds = (time.perf_counter() - t0) / len(runs)  # the pass's time, shared out
        ahead = T.epoch_batches(train_split, cfg, epoch + 1, weights) if epoch + 1 < cfg.epochs else None
        probs = T.predict_many([r.head for r in runs], val_split, multi, device=device)
        seconds = (time.perf_counter() - t0) / len(runs)
        for r, p, loss in zip(runs, probs, losses, strict=True):
            val = M.evaluate_probs(p, val_split.targets(multi), multi)
            lr = T.lr_at(r.cfg, epoch * steps + steps - 1, steps)
            entry = {"epoch": epoch + 1, "loss": loss, "lr": lr,
                     "val": M.summary(val), "seconds": seconds, "train_seconds": train_seconds,
                     "data_wait_seconds": wait / len(runs),
                     "heads_in_pass": len(runs)}  # fmt: skip
            score = M.selection_score(val, multi)  # mAP (threshold-free) or Acc@1
            if T.keep_if_best(r.out, r.head, score, r.best):
                r.best, r.best_epoch = score, epoch + 1
            r.history.append(entry)
            T.save_epoch(r.out, r.head, r.opt, r.rng, epoch, r.best, r.best_epoch, r.history,
                         T.run_identity(r.cfg, cache), r.cuda_rng)  # fmt: skip
            tb.log_epoch(r.out, entry)


# ---- the sweep -----------------------------------------------------------------------------------------


def finished_runs(out: Path) -> set[str]:
    """Run names already recorded in out/results.jsonl (skipped on resume); a torn last line is skipped."""
    try:
        return {str(r.get("run")) for r in runio.read_records(Path(out) / "results.jsonl")}
    except ValueError as e:
        raise SweepError(f"{e}; fix or remove that line") from None


def run_sweep(
    jobs: list[Job], out: str | Path, memory: int | str | None = None, device: str | None = None,
    progress: bool = True, echo=print, keep_checkpoints: bool = False,
) -> list[dict]:  # fmt: skip
    """Train every job, grouped by cache, data key and memory; returns the metrics of the runs trained now.
    `out` and each run folder are locked while written (RunBusy for a second sweep on the same --out)."""
    from .cache import open_cache

    for url in dict.fromkeys(j.cache for j in jobs):  # a bad cache or --memory fails before --out exists
        open_cache(url)
    if memory is not None:
        D.ram_limit(memory)
    with runio.lock(out, "sweep folder"):
        return _run_sweep(jobs, Path(out), memory, device, progress, echo, keep_checkpoints)


def _run_sweep(jobs: list[Job], out: Path, memory, device, progress: bool, echo, keep_checkpoints: bool
               ) -> list[dict]:  # fmt: skip
    from .cache import open_cache

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cap = D.ram_limit(memory, "--memory") if memory is not None else default_memory(device)
    done = finished_runs(out)
    caches = {url: open_cache(url) for url in dict.fromkeys(j.cache for j in jobs)}
    failures = {url: D.check_complete(c) for url, c in caches.items()}  # every cache checked before any run
    results = []
    for url, cache in caches.items():
        failed = failures[url]
        mine = [j.cfg for j in jobs if j.cache == url]
        todo = [c for c in mine if T.run_name(c, cache) not in done]
        echo(f"cache {url}: {len(mine)} runs, {len(mine) - len(todo)} already in {out / 'results.jsonl'}")
        if not todo:
            continue
        splits: dict[tuple, D.SplitData] = {}  # loaded once per cache, shared by all data keys
        by_key: dict[tuple, list] = {}
        for c in todo:  # a resumed head can only share a pass with heads at the same epoch
            start = _resume_epoch(out / T.run_name(c, cache))
            by_key.setdefault((data_key(c), start), []).append(c)
        for (_, start), cfgs in by_key.items():
            c0 = cfgs[0]
            train_split = _split(splits, cache, "train", c0.train_views, c0.ram_limit)
            T.check_classes(cache, train_split)
            val_split = _split(splits, cache, c0.val_split, c0.test_views, c0.ram_limit)
            held = sum(s.features.nbytes for s in splits.values() if s.in_ram)
            free = cap - held if torch.device(device).type == "cpu" else cap  # features share the RAM
            sizes = [estimate_bytes(c, cache.feature_shape, len(cache.class_names)) for c in cfgs]
            groups = group_by_memory(sizes, free)
            mib = [(sum(sizes[i][0] for i in g) + max(sizes[i][1] for i in g)) / 2**20 for g in groups]
            echo(
                f"  data key seed={c0.batch_seed} batch={c0.batch_size} epochs={c0.epochs}"
                f"{f' from epoch {start + 1}' if start else ''}: {len(cfgs)} heads in {len(groups)} pass(es)"
                f" under {free / 2**20:.0f} MiB: "
                + "; ".join(f"{len(g)} heads ~{m:.1f} MiB" for g, m in zip(groups, mib, strict=True))
            )
            for g in groups:
                with contextlib.ExitStack() as folders:  # each run folder locked while its pass writes it
                    dirs = [out / T.run_name(cfgs[i], cache) for i in g]
                    for d in dirs:
                        folders.enter_context(runio.lock(d))
                    runs = [make_run(cfgs[i], cache, d, device, failed) for i, d in zip(g, dirs, strict=True)]
                    t0 = time.perf_counter()
                    train_group(runs, cache, train_split, val_split, device, progress)
                    for r in runs:
                        m = T.finish(r.out, r.cfg, cache, val_split, r.best_epoch, r.history, device,
                                     keep_checkpoints)  # fmt: skip
                        results.append(m)
                        flag = f"  DEGENERATE: {m['degenerate']}" if m.get("degenerate") else ""
                        echo(f"    {r.out.name}: val {_fmt(m, 'val')} test {_fmt(m, 'test')}{flag}")
                echo(f"    pass of {len(runs)} heads: {time.perf_counter() - t0:.1f} s")
    return results


def _split(splits: dict, cache, name: str, views: str, limit) -> D.SplitData:
    """Split `name` of the cache, loaded on first use and kept in `splits`."""
    if (name, views, limit) not in splits:
        splits[(name, views, limit)] = D.load_split(cache, name, views=views, limit=limit)
    return splits[(name, views, limit)]


def _resume_epoch(run_dir: Path) -> int:
    """Epochs a run folder's resume checkpoint claims finished (0 when none); only its JSON header is read
    (make_run validates the whole checkpoint before loading it)."""
    ckpt = run_dir / T.RESUME_FILE
    if not ckpt.exists() or not (run_dir / "config.json").exists():
        return 0
    epoch = runio.read_state_meta(ckpt)["meta"].get("epoch")
    if not isinstance(epoch, int) or epoch < 0:
        raise runio._bad(ckpt, f"epoch {epoch!r}")
    return epoch


def _fmt(metrics: dict, split: str) -> str:
    m = metrics.get(split, {})
    key = metrics.get("main_metric", "acc1")
    text = f"{key} {100 * m[key]:.2f}" if m.get(key) is not None else "—"
    tuned = metrics.get(f"{split}_tuned")
    return text + (f" F1 {100 * tuned['macro_f1']:.2f}@{tuned['threshold']:.2f}" if tuned else "")
