"""Use a trained run: backbone + head end to end on new videos (long ones: see timeline.py).

`load_predictor(run)` rebuilds the run's backbone from the provenance of the cache it was trained on (a
`checkpoint` must have the recorded sha256; random-weight backbones are rebuilt from their fixed seed) and
its head from best.safetensors. Videos are decoded, sampled and cropped exactly as the cache's test views
were, and probabilities (softmax, or sigmoid for multi-label) are averaged over the views like mmaction2's
`average_clip='prob'`. `predict_files` batches many files and reports bad ones without stopping.
CLI: `stecache predict RUN VIDEO_OR_DIR... [--top-k 5] [--format table|json|csv]`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import canonical_json
from .errors import CacheMismatch, CheckpointMismatch, RunError, StecacheError, VideoError
from .train import load_head, read_metrics, read_run
from .video import Preprocess, Sampling, load_clip

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".mts", ".ts")


@dataclass
class Predictor:
    """A run's backbone + head with the cache's frame sampling and preprocessing."""

    backbone: nn.Module
    head: nn.Module
    sampling: Sampling  # num_clips = the test views' clips
    preprocess: Preprocess  # crop = "three" when the test views have 3 crops
    num_views: int  # views averaged per clip: all test views, or 1 (the run's test_views="first")
    class_names: tuple[str, ...]
    multi_label: bool
    threshold: float  # multi-label: the run's val-tuned threshold (0.5 if none)
    run: Path
    batch_size: int = 16  # views per backbone forward

    @property
    def device(self) -> torch.device:
        for p in (*self.head.parameters(), *self.backbone.parameters()):
            return p.device
        return torch.device("cpu")

    @torch.inference_mode()
    def logits(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised clips [M, 3, T, H, W] -> logits [M, K], in chunks of batch_size."""
        out = []
        for x in clips.split(self.batch_size):
            out.append(self.head(self.backbone(x.to(self.device))).float().cpu())  # [m, K]
        return torch.cat(out)

    def probs(self, views: torch.Tensor) -> torch.Tensor:
        """Views [B, V, 3, T, H, W] -> probabilities [B, K] averaged over V (mmaction2 'prob')."""
        b, v = views.shape[:2]
        logits = self.logits(views.flatten(0, 1)).view(b, v, -1)  # [B, V, K]
        p = torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)
        return p.mean(1)

    def load(self, path: str | Path) -> torch.Tensor:
        """The views of one video, float32 [V, 3, T, H, W], exactly as the cache's views were made."""
        return load_clip(path, self.sampling, self.preprocess)[: self.num_views]

    def predicted(self, probs: np.ndarray) -> list[int]:
        """Predicted class indices: the arg-max, or every class at/above the threshold (multi-label)."""
        if self.multi_label:
            return [int(k) for k in np.flatnonzero(probs >= self.threshold)]
        return [int(np.argmax(probs))]


# ---- rebuilding a run ------------------------------------------------------------------------------------


def load_backbone(prov: dict, checkpoint: str | Path | None = None, device="cpu") -> nn.Module:
    """The backbone a cache was extracted with, from its provenance; the checkpoint must match its sha256."""
    from .backbones import load

    name, weights = prov["name"], prov.get("weights", "random")
    if weights == "random" and checkpoint is not None:
        raise CheckpointMismatch(
            f"--checkpoint {checkpoint}: this run's cache was extracted with random {name} weights; drop it"
        )
    if weights != "random" and checkpoint is None and not name.startswith("image:"):
        raise CheckpointMismatch(
            f"this run's cache was extracted with {name} checkpoint {prov.get('checkpoint')} "
            f"(sha256 {weights}); pass --checkpoint PATH to that file"
        )
    try:
        backbone = load(name, checkpoint, device)
    except ValueError as e:  # a backbone this stecache does not know
        raise RunError(f"cannot rebuild the run's backbone: {e}") from None
    got = backbone.provenance()
    if got.get("weights", "random") != weights:
        raise CheckpointMismatch(
            f"{checkpoint or name}: weights sha256 {got.get('weights')} != {weights} recorded in the cache; "
            "predictions would not match the trained head"
        )
    diff = sorted(
        k for k in prov if k != "checkpoint" and canonical_json(got.get(k)) != canonical_json(prov[k])
    )
    if diff:
        raise CacheMismatch(
            f"backbone {name} built by this stecache differs from the cache's in {', '.join(diff)}: "
            "the code changed since extraction; re-extract the cache and re-train"
        )
    return backbone


def load_predictor(
    run: str | Path,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    backbone: nn.Module | None = None,
) -> Predictor:
    """Backbone + head + preprocessing of `run`; `backbone` overrides the rebuilt one (tests, reuse)."""
    from .train import TrainConfig

    rec = read_run(run)
    attrs = rec["cache_attrs"]
    if "backbone" not in attrs or not isinstance(attrs["backbone"], dict):
        raise RunError(
            f"{run}: its cache records no backbone provenance (imported features?); cannot predict"
        )
    prov = attrs["backbone"]
    sampling = Sampling.from_dict(attrs.get("sampling", prov["sampling"]))
    preprocess = Preprocess.from_dict(attrs.get("preprocess", prov["preprocess"]))
    views = attrs.get("views") or {}
    clips, crops = views.get("test", [sampling.num_clips, preprocess.num_crops])
    if (clips, crops) != (sampling.num_clips, preprocess.num_crops):
        raise RunError(f"{run}: cache views {views} disagree with its sampling/preprocess attributes")
    cfg = TrainConfig.from_dict(rec["config"])
    num_views = clips * crops if cfg.test_views == "test" else 1
    threshold = read_metrics(run).get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise RunError(f"{run}/metrics.json: threshold {threshold!r} is not a number in 0..1")
    threshold = float(threshold)
    if backbone is None:
        backbone = load_backbone(prov, checkpoint, device)
    return Predictor(
        backbone=backbone.eval(),
        head=load_head(run, rec, device),
        sampling=sampling,
        preprocess=preprocess,
        num_views=num_views,
        class_names=tuple(attrs["class_names"]),
        multi_label=bool(attrs["multi_label"]),
        threshold=threshold,
        run=Path(run),
    )


# ---- many files --------------------------------------------------------------------------------------------


def expand_inputs(items: list[str | Path]) -> list[Path]:
    """Files as given, and the video files (by suffix) under each directory, sorted."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise StecacheError(f"{item}: directory holds no video files ({', '.join(VIDEO_SUFFIXES)})")
            out += found
        else:
            out.append(item)  # a missing file becomes a per-file MissingVideo, not a fatal error
    return out


class _Loader(torch.utils.data.Dataset):
    """Loads the views of file j, or the reason it cannot (runs in DataLoader workers)."""

    def __init__(self, pred: Predictor, paths: list[Path]):
        self.sampling, self.preprocess, self.v, self.paths = (
            pred.sampling,
            pred.preprocess,
            pred.num_views,
            paths,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: int):
        try:
            return j, load_clip(self.paths[j], self.sampling, self.preprocess)[: self.v], ""
        except (VideoError, ValueError, OSError) as e:
            return j, None, f"{type(e).__name__}: {e}"


def _identity(x):
    return x


def predict_files(
    pred: Predictor, paths: list[Path], batch_size: int = 4, workers: int = 0, progress: bool = True
) -> list[dict]:
    """A result per file, in order: {"path", "probs" [K] or None, "error" or None}; bad files are skipped."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        _Loader(pred, paths), batch_size=None, num_workers=workers, collate_fn=_identity
    )
    results: list[dict] = [{"path": str(p), "probs": None, "error": None} for p in paths]
    pending: list[tuple[int, torch.Tensor]] = []

    def flush():
        if pending:
            probs = pred.probs(torch.stack([x for _, x in pending])).numpy()  # [B, K]
            for (j, _), p in zip(pending, probs, strict=True):
                results[j]["probs"] = p.astype(np.float64)
            pending.clear()

    with tqdm(total=len(paths), unit="video", disable=None if progress else True) as bar:
        for j, x, err in loader:
            if err:
                results[j]["error"] = err
                bar.write(f"skipped {paths[j]}: {err}", file=sys.stderr)
            else:
                pending.append((j, x))
                if len(pending) == batch_size:
                    flush()
            bar.update(1)
        flush()
    return results


def rows(pred: Predictor, results: list[dict], top_k: int = 5) -> list[dict]:
    """JSON-able records: path, top-k classes with scores, predicted labels, error."""
    out = []
    for r in results:
        rec: dict = {"path": r["path"], "error": r["error"], "top": [], "predicted": []}
        if r["probs"] is not None:
            p = r["probs"]
            order = np.argsort(-p, kind="stable")[:top_k]
            rec["top"] = [{"class": pred.class_names[k], "score": round(float(p[k]), 6)} for k in order]
            rec["predicted"] = [pred.class_names[k] for k in pred.predicted(p)]
        out.append(rec)
    return out


def format_rows(records: list[dict], fmt: str = "table", multi_label: bool = False, threshold=0.5) -> str:
    """Render `rows(...)` as a readable table, JSON or CSV."""
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "class", "score", "predicted", "error"])
        for r in records:
            if r["error"]:
                w.writerow([r["path"], "", "", "", "", r["error"]])
            for i, t in enumerate(r["top"], 1):
                w.writerow(
                    [r["path"], i, t["class"], f"{t['score']:.6f}", int(t["class"] in r["predicted"]), ""]
                )
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"format {fmt!r}: expected table, json or csv")
    width = max([len(t["class"]) for r in records for t in r["top"]] + [5])
    mark = f"* = score >= threshold {threshold:.2f}" if multi_label else "* = predicted"
    lines = [f"{len(records)} video(s); {mark}"]
    for r in records:
        lines.append(r["path"])
        if r["error"]:
            lines.append(f"  FAILED  {r['error']}")
        for i, t in enumerate(r["top"], 1):
            star = "*" if t["class"] in r["predicted"] else " "
            lines.append(f"  {i:>2}  {t['class']:<{width}}  {100 * t['score']:6.2f}%  {star}".rstrip())
        if multi_label and not r["error"]:
            lines.append(f"  labels: {', '.join(r['predicted']) or '(none above threshold)'}")
    return "\n".join(lines)
