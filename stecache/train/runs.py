"""Run folders: the name a run gets, its config.json, the end of a run (`finish`: best epoch on val, test
once, metrics.json, the plot, one results.jsonl line), and reading a finished run back (`read_run`,
`load_head`, `evaluate`, `read_metrics`) for `stecache evaluate`, `predict`, `export` and the report.

A folder holds config.json, log.jsonl, last/best.safetensors, metrics.json, confusion.png or
per_class_f1.png and, until the run is finished, resume.safetensors (checkpoint.py).
Python: `evaluate("runs/demo-ste-d2", split="test")`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import data as D
from .. import metrics as M
from .. import runio, tb
from ..config import fingerprint
from ..errors import CacheMismatch, RunError, StecacheError, TrainError
from .checkpoint import drop_resume_state
from .config import TrainConfig
from .pieces import make_head, predict

log = logging.getLogger(__name__)

_SHORT = {"epochs": "ep", "batch_size": "bs", "weight_decay": "wd", "warmup_epochs": "wu", "data_seed": "ds"}


def _backbone(cache):
    """The backbone name in a cache's provenance (older caches store the name alone)."""
    prov = cache.attrs.get("backbone", {})
    return prov.get("name") if isinstance(prov, dict) else prov


def run_name(cfg: TrainConfig, cache) -> str:
    """Default run folder name: cache (backbone) name, head, depth, every setting that differs from the
    defaults (a swept value shows), seed, and a short hash of config + cache, e.g.
    `synth-videomaev2-tiny-ste-d1-ep20-lr0.01-s0-3fa9c1`."""
    h = fingerprint({"config": cfg.to_dict(), "cache": cache.fingerprint})[:6]
    base = Path(str(cache.url).rstrip("/")).name.removesuffix(".zarr")
    backbone = _backbone(cache)
    if backbone and str(backbone) not in base:
        base = f"{backbone}-{base}"
    default, now = TrainConfig().to_dict(), cfg.to_dict()
    skip = ("head", "depth", "seed", "head_options", "ram_limit")
    parts = [f"{_SHORT.get(k, k)}{now[k]}" for k in now if k not in skip and now[k] != default[k]]
    parts += [f"{k}{v}" for k, v in sorted(cfg.head_options.items())]
    depth = f"d{cfg.depth if cfg.depth is not None else 'x'}"
    name = "-".join([base, cfg.head, depth, *parts, f"s{cfg.seed}", h])
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def write_run_config(out: Path, cfg: TrainConfig, cache, failed: int, world: int = 1) -> None:
    """A run's config.json: its config, the cache (absolute path, fingerprint, attributes), failed clips."""
    out.mkdir(parents=True, exist_ok=True)
    url = cache.url if "://" in cache.url else str(Path(cache.url).resolve())  # evaluate from anywhere
    record = {"config": cfg.to_dict(), "cache_fingerprint": cache.fingerprint,
              "cache": {"url": url, "fingerprint": cache.fingerprint, "content": cache.content_digest()},
              "cache_attrs": cache.attrs,
              "failed_clips": failed, "world_size": world}  # fmt: skip
    runio.write_file(out / "config.json", json.dumps(record, indent=2, default=str) + "\n")


def _json_safe(obj):
    """NaN (an undefined metric, e.g. AP of a class without positives) → None, for strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return [_json_safe(v) for v in obj] if isinstance(obj, list) else obj


def finish(out: Path, cfg: TrainConfig, cache, val_split, best_epoch: int, history: list, device,
           keep_checkpoints: bool = False) -> dict:  # fmt: skip
    """Evaluate the best weights on val and (once) on test; write metrics.json, the plot, results.jsonl.

    Flags a degenerate run (no label predicted, or one answer for every clip) in metrics and the record;
    then drops the resume checkpoint (`drop_resume_state`) unless keep_checkpoints."""
    multi = bool(cache.multi_label)
    if best_epoch < 1:
        what = M.main_metric(multi)
        raise TrainError(f"{out}: no epoch reached a finite val {what} with finite weights; nothing to test")
    head = make_head(cfg, cache).to(device)
    load_weights(head, out / "best.safetensors")
    val_probs = predict(head, val_split, multi, device=device)
    val = M.evaluate_probs(val_probs, val_split.targets(multi), multi)
    metrics = {"main_metric": M.main_metric(multi), "best_epoch": best_epoch, "epochs": cfg.epochs,
               "val_clips": len(val_split), "val": val}  # fmt: skip
    threshold = 0.5
    if multi and cfg.tune_threshold:
        threshold = M.tune_threshold(val_probs, val_split.targets(multi))
        metrics["threshold"] = threshold
        metrics["val_tuned"] = M.evaluate_probs(val_probs, val_split.targets(multi), multi, threshold)
    try:
        test_split = D.load_split(cache, "test", views=cfg.test_views, limit=cfg.ram_limit)
    except D.EmptySplit:
        test_split = None
        log.warning("cache %s has no test split: reporting val only", cache.url)
    if test_split is not None:
        test_probs = predict(head, test_split, multi, device=device)
        metrics["test_clips"] = len(test_split)
        metrics["test"] = M.evaluate_probs(test_probs, test_split.targets(multi), multi)
        if multi and cfg.tune_threshold:
            metrics["test_tuned"] = M.evaluate_probs(test_probs, test_split.targets(multi), multi, threshold)
    probs = test_probs if test_split is not None else val_probs
    metrics["degenerate"] = M.degenerate(probs, multi, threshold, cache.class_names)
    if metrics["degenerate"]:
        log.warning("run %s is degenerate: %s", out.name, metrics["degenerate"])
    runio.write_file(out / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    M.plot_metrics(
        metrics.get("test_tuned") or metrics.get("test", val),  # multi-label: at the val-tuned threshold
        cache.class_names,
        multi,
        out / ("per_class_f1.png" if multi else "confusion.png"),
        split="test" if "test" in metrics else "val",
    )
    record = {
        "run": out.name, "run_dir": str(out), "head": cfg.head, "depth": cfg.depth, "seed": cfg.seed,
        "config": cfg.to_dict(), "cache": str(cache.url), "cache_fingerprint": cache.fingerprint,
        "backbone": _backbone(cache),
        "dataset": cache.attrs.get("dataset"),
        "multi_label": multi, "best_epoch": best_epoch, "params": sum(p.numel() for p in head.parameters()),
        "seconds": sum(h.get("seconds", 0.0) for h in history),
        "val": M.summary(val), "test": M.summary(metrics.get("test", {})),
    }  # fmt: skip
    if "test_tuned" in metrics:
        record["test_tuned"] = M.summary(metrics["test_tuned"])
        record["val_tuned"] = M.summary(metrics["val_tuned"])
    record["degenerate"] = metrics["degenerate"]
    # one whole line, fsynced; re-running a finished run (same folder, config, cache) adds no second line
    key = ("run_dir", "config", "cache_fingerprint")
    same = lambda old: all(old.get(k) == record[k] for k in key)  # noqa: E731
    runio.append_record(out.parent / "results.jsonl", _json_safe(record), same)
    tb.close(out)
    if not keep_checkpoints:
        drop_resume_state(out)
    return metrics | {"run_dir": str(out)}


def read_run(run: str | Path) -> dict:
    """A run folder's config.json record, with `cache_attrs` (read from the cache if not stored)."""
    run = Path(run)
    cfg_file, weights = run / "config.json", run / "best.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise RunError(f"{run}: not a trained run (needs config.json and best.safetensors from train-head)")
    try:  # validated before anything else in the folder is read
        rec = json.loads(cfg_file.read_text())
        TrainConfig.from_dict(rec["config"])  # strict: unknown keys and bad values are errors
        if not (isinstance(rec["cache"]["url"], str) and isinstance(rec["cache"]["fingerprint"], str)):
            raise TypeError("cache url and fingerprint must be strings")
        attrs = rec.get("cache_attrs")
        if attrs and not (isinstance(attrs, dict) and isinstance(attrs.get("class_names"), list)
                          and isinstance(attrs.get("feature_shape"), list)):  # fmt: skip
            raise TypeError("cache_attrs needs class_names and feature_shape lists")
    except (ValueError, KeyError, TypeError, StecacheError) as e:
        raise RunError(f"{cfg_file}: not a run config ({type(e).__name__}: {str(e)[:150]})") from None
    if not rec.get("cache_attrs"):
        from ..cache import open_cache

        rec["cache_attrs"] = open_cache(rec["cache"]["url"]).attrs
    return rec


def load_head(run: str | Path, rec: dict | None = None, device: str | torch.device = "cpu"):
    """The run's best head (built from its cache attributes), eval mode, frozen, on `device`."""
    from ..heads import build_head

    rec = rec or read_run(run)
    cfg, attrs = TrainConfig.from_dict(rec["config"]), rec["cache_attrs"]
    head = build_head(
        cfg.head, tuple(attrs["feature_shape"]), len(attrs["class_names"]), cfg.depth, **cfg.head_options
    )
    load_weights(head, Path(run) / "best.safetensors")
    return head.requires_grad_(False).eval().to(device)


def load_weights(head, weights: Path) -> None:
    """Load safetensors weights (data only, never code) into `head`; RunError if damaged or another head's."""
    try:
        head.load_state_dict(load_file(str(weights)))  # shapes and names checked by torch
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever the parser says
        why = f"{type(e).__name__}: {str(e)[:120]}; delete the run to train it anew"
        raise RunError(f"{weights}: not this run's head weights ({why})") from None


def run_cache_url(run_dir: Path, rec: dict, cache: str | None = None) -> str:
    """`cache`, else the cache the run was trained on; RunError naming --cache when that one has moved."""
    url = cache or rec["cache"]["url"]
    if cache is None and "://" not in str(url) and not Path(url).exists():
        raise RunError(f"{url}: the cache run {run_dir} was trained on is not there; moved? pass --cache")
    return url


def open_run_cache(run_dir: Path, rec: dict, cache: str | None = None):
    """The cache run `run_dir` was trained on (or `cache`, a copy of it); CacheMismatch if another cache."""
    from ..cache import attrs_diff, open_cache

    c = open_cache(run_cache_url(run_dir, rec, cache))
    if c.fingerprint != rec["cache"]["fingerprint"]:
        old = rec.get("cache_attrs", {})
        diff = [line.split(":")[0] for line in attrs_diff(old, c.attrs)]
        raise CacheMismatch(
            f"cache {c.url} (fingerprint {c.fingerprint}) is not the one run {run_dir} was trained on "
            f"({rec['cache']['fingerprint']}); differing attributes: {', '.join(diff) or 'unknown'}"
        )
    content = rec["cache"].get("content")  # the bytes too, not only the attributes (issue 14)
    if content and c.content_digest() not in (None, content):
        raise CacheMismatch(
            f"cache {c.url} has the attributes of run {run_dir}'s cache but other content (checksums "
            f"{c.content_digest()} vs {content}): it was re-extracted or repaired; use the original"
        )
    return c


def evaluate(run_dir: str | Path, split: str = "test", cache: str | None = None, device="cpu") -> dict:
    """Metrics of run `run_dir`'s best head on `split` of its cache (or of `cache`, same fingerprint)."""
    run_dir = Path(run_dir)
    rec = read_run(run_dir)
    cfg = TrainConfig.from_dict(rec["config"])
    c = open_run_cache(run_dir, rec, cache)
    head = load_head(run_dir, rec, device)
    multi = bool(c.multi_label)
    data = D.load_split(c, split, views=cfg.test_views, limit=cfg.ram_limit)
    probs = predict(head, data, multi, device=device)
    out = {"run": str(run_dir), "split": split, "clips": len(data), "class_names": c.class_names,
           "metrics": M.evaluate_probs(probs, data.targets(multi), multi)}  # fmt: skip
    if multi and "threshold" in (m := read_metrics(run_dir)):
        out["tuned"] = M.evaluate_probs(probs, data.targets(multi), multi, m["threshold"])
    return out


def read_metrics(run: str | Path) -> dict:
    """A run's metrics.json ({} when absent); RunError when not JSON or its threshold is not in [0, 1]."""
    path = Path(run) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text())
        t = m.get("threshold", 0.5)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise ValueError(f"threshold {t!r} is not in [0, 1]")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise RunError(f"{path}: not a run's metrics ({type(e).__name__}: {str(e)[:120]})") from None
    return m
