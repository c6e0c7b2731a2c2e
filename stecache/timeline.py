"""Long videos: slide a clip window over a video and predict each window, for a timeline of which action when.

`timeline(pred, path, window=2, stride=1)` decodes the video once, preprocesses each sampled frame once,
and runs the run's views (frame sampling inside each window, crops) through `Predictor.probs`; windows
are `window` seconds long, start every `stride` seconds, and the last one ends the video. The result is
written as CSV, JSON and a PNG heat map (matplotlib Agg). CLI: `stecache predict RUN VIDEO --window 2`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import StecacheError, VideoError
from .predict import Predictor
from .report.figures import DPI
from .video import frame_indices, iter_frames, preprocess_frames


def video_info(path: str | Path) -> tuple[int, float]:
    """(frames, frames per second) of a video's first stream."""
    from .video.decode import _open, count_frames

    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoError(f"{path}: the video stream has no frame rate; cannot place windows in time")
    return count_frames(path), float(rate)


def windows(total: int, fps: float, window: float, stride: float) -> list[tuple[int, int]]:
    """[start, stop) frames of `window`-second windows every `stride` seconds; the last one ends the video."""
    if window <= 0 or stride <= 0:
        raise StecacheError(f"--window {window} and --stride {stride} must be > 0 seconds")
    length, step = max(1, round(window * fps)), max(1, round(stride * fps))
    if length >= total:
        return [(0, total)]
    starts = list(range(0, total - length + 1, step))
    if starts[-1] != total - length:
        starts.append(total - length)  # cover the tail
    return [(s, s + length) for s in starts]


MARK = {"s": 14, "c": "w", "edgecolors": "k", "linewidths": 0.6}  # white with a dark edge: visible anywhere


def timeline(pred: Predictor, path: str | Path, window: float, stride: float, progress=True) -> dict:
    """Per-window probabilities of a long video: {"fps", "frames", "windows": [{start, end, probs}]}."""
    from tqdm import tqdm

    total, fps = video_info(path)
    spans = windows(total, fps, window, stride)
    s = pred.sampling
    idx = [frame_indices(s, b - a) + a for a, b in spans]  # each [clips, T], absolute frame numbers
    last_use: dict[int, int] = {}
    for w, ix in enumerate(idx):
        for f in ix.reshape(-1).tolist():
            last_use[f] = w
    frames: dict[int, torch.Tensor] = {}  # frame -> [crops, 3, 1, S, S], preprocessed once
    out, pending, w = [], [], 0
    bar = tqdm(total=len(spans), unit="window", disable=None if progress else True)

    def flush():
        if pending:
            probs = pred.probs(torch.stack([x for _, x in pending])).numpy()
            for (k, _), p in zip(pending, probs, strict=True):
                a, b = spans[k]
                out.append({"start": a / fps, "end": b / fps, "probs": p.astype(np.float64).tolist()})
            bar.update(len(pending))
            pending.clear()

    for f, rgb in iter_frames(path, list(last_use)):
        frames[f] = preprocess_frames(rgb[None], 1, pred.preprocess)  # [crops, 3, 1, S, S]
        while w < len(spans) and all(i in frames for i in idx[w].reshape(-1).tolist()):
            pending.append((w, _assemble(frames, idx[w])[: pred.num_views]))
            for i in [i for i in frames if last_use[i] <= w]:
                del frames[i]
            w += 1
            if len(pending) * pred.num_views >= pred.batch_size:  # bounded memory: ~one forward batch
                flush()
    flush()
    bar.close()
    return {
        "path": str(path),
        "fps": fps,
        "frames": total,
        "window": window,
        "stride": stride,
        "windows": out,
    }


def _assemble(frames: dict[int, torch.Tensor], ix: np.ndarray) -> torch.Tensor:
    """Views [crops*clips, 3, T, S, S] (crop-major) from per-frame crops; ix is [clips, T]."""
    clips = [torch.cat([frames[i] for i in row.tolist()], dim=2) for row in ix]  # each [crops, 3, T, S, S]
    return torch.stack(clips, 1).flatten(0, 1)  # [crops, clips, ...] -> [V, 3, T, S, S]


def timeline_record(result: dict, class_names, multi_label=False, threshold=0.5) -> dict:
    """The JSON-able timeline of `timeline(...)`: per window start, end, top class and every class score."""
    rec = {**result, "class_names": list(class_names), "multi_label": multi_label, "threshold": threshold}
    rec["windows"] = []
    for w in result["windows"]:
        p = np.asarray(w["probs"])
        t = int(p.argmax())
        scores = {c: round(float(x), 6) for c, x in zip(class_names, p, strict=True)}
        span = {"start": round(w["start"], 4), "end": round(w["end"], 4)}
        rec["windows"].append(
            {**span, "top": class_names[t], "score": round(float(p[t]), 6), "scores": scores}
        )
    return rec


def timeline_csv(rec: dict) -> str:
    """One CSV line per window: path, start, end, top, score, then a column per class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "start", "end", "top", "score", *rec["class_names"]])
    for win in rec["windows"]:
        row = [rec["path"], f"{win['start']:.3f}", f"{win['end']:.3f}", win["top"], f"{win['score']:.6f}"]
        w.writerow(row + [f"{win['scores'][c]:.6f}" for c in rec["class_names"]])
    return buf.getvalue().rstrip("\n")


def format_segments(rec: dict) -> str:
    """Readable summary: runs of consecutive windows with the same top class, with their mean score."""
    lines = [f"{rec['path']}: {len(rec['windows'])} windows of {rec['window']} s every {rec['stride']} s"]
    runs: list[list] = []
    for win in rec["windows"]:
        if runs and runs[-1][2] == win["top"] and win["start"] <= runs[-1][1]:  # stride > window: gaps split
            runs[-1][1], runs[-1][3] = win["end"], runs[-1][3] + [win["score"]]
        else:
            runs.append([win["start"], win["end"], win["top"], [win["score"]]])
    for a, b, top, scores in runs:
        lines.append(f"  {a:8.2f} - {b:8.2f} s  {top:<20} {100 * np.mean(scores):6.2f}%")
    return "\n".join(lines)


def timeline_files(
    pred: Predictor, paths, window: float, stride: float, out_dir: str | Path
) -> Iterator[dict]:
    """Per video, as it finishes: {"path", "record" (a timeline_record) or None, "files" written, "error"}.

    A video that cannot be decoded gets its error and no record; the others still run. Videos with the same
    stem (a.mp4, a.avi, x/a.mp4) get distinct file names (a, a.avi, a-3) instead of overwriting each other.
    """
    used: set[str] = set()
    for path in paths:
        try:
            tl = timeline(pred, path, window, stride)
        except VideoError as e:
            yield {"path": str(path), "record": None, "files": [], "error": f"{type(e).__name__}: {e}"}
            continue
        rec = timeline_record(tl, pred.class_names, pred.multi_label, pred.threshold)
        stem = Path(path).stem if Path(path).stem not in used else Path(path).name
        stem = stem if stem not in used else f"{Path(path).stem}-{len(used) + 1}"
        used.add(stem)
        yield {"path": str(path), "record": rec, "files": write_timeline(rec, out_dir, stem), "error": None}


def timelines_csv(records: list[dict]) -> str:
    """Several timeline records as one CSV (one header line)."""
    tables = [timeline_csv(r).split("\n", 1) for r in records]
    return "\n".join([tables[0][0], *(t[1] for t in tables if len(t) > 1)]) if tables else ""


def write_timeline(rec: dict, out_dir: str | Path, stem: str | None = None) -> list[Path]:
    """Write a `timeline_record` as <stem>.timeline.json, .csv and .png into out_dir; the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(rec["path"]).stem
    paths = [out_dir / f"{stem}.timeline{ext}" for ext in (".json", ".csv", ".png")]
    paths[0].write_text(json.dumps(rec, indent=2) + "\n")
    paths[1].write_text(timeline_csv(rec) + "\n")
    _plot(rec, paths[2])
    return paths


def _plot(rec: dict, path: Path) -> None:
    """Heat map of class scores over time (window centres); top (or above-threshold) classes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, ws = rec["class_names"], rec["windows"]
    probs = np.array([[w["scores"][c] for c in names] for w in ws])  # [W, K]
    centres = np.array([(w["start"] + w["end"]) / 2 for w in ws])
    k, half = len(names), rec["stride"] / 2
    # cell edges halfway between window centres: the tail window (off the stride grid) sits under its marker
    mid = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (mid[0] - centres[0] if len(mid) else half)
    edges = np.concatenate([[first], mid, [centres[-1] + (centres[-1] - mid[-1] if len(mid) else half)]])
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.3 * len(ws) + 4)), 1.2 + 0.35 * k))
    im = ax.pcolormesh(edges, np.arange(k + 1) - 0.5, probs.T, cmap="viridis", vmin=0, vmax=1)
    if rec["multi_label"]:
        xs, ys = np.nonzero(probs >= rec["threshold"])
        ax.scatter(centres[xs], ys, label=f"score >= {rec['threshold']:.2f}", marker="s", **MARK)
    else:
        ax.scatter(centres, probs.argmax(1), label="top class", marker="o", **MARK)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("time (s), window centre")
    ax.set_title(f"{Path(rec['path']).name}: {rec['window']} s windows every {rec['stride']} s", loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    fig.colorbar(im, ax=ax, label="probability")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)  # as every report figure
    plt.close(fig)
