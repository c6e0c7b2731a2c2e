"""`stecache check-data`: the dry run of ingestion, before hours of GPU time and without a cache.

Takes the dataset `extract` would read (annotations already parsed into one class list), resolves every
path (refusing those whose real path leaves the data root), and probes every video in worker processes:
open it, read the header, count packets (no decoding but the first frame), size, fps, duration, and
check segments and boxes against it. Reports per split and class: counts, missing, undecodable, partial,
escaping paths, segments/boxes outside the video. Like mmaction2's `check_videos.py`, on annotations.
Python: `check_data(dataset)`; the report is a dict (`format_report` renders the table).
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .annotations import Dataset, resolve_clip
from .errors import PathOutsideRoot, VideoError

ERRORS = ("missing", "undecodable", "escaping", "segment_outside", "box_outside")  # exit code 1
NOTES = ("partial", "header_overstates")  # reported; extract keeps these clips


def probe(path: str | Path) -> dict:
    """Facts about one video file or frame folder: frames (header, packets), size, fps, duration."""
    import av

    from .video.decode import _open, _read_image, frame_files

    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        h, w = _read_image(files[0]).shape[:2]
        return {"frames": len(files), "header_frames": len(files), "width": w, "height": h, "fps": None,
                "duration": None, "broken": None}  # fmt: skip
    container, stream = _open(path)
    with container:
        tb = float(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        info = {"header_frames": int(stream.frames), "width": stream.codec_context.width,
                "height": stream.codec_context.height, "fps": float(rate) if rate else None,
                "broken": None}  # fmt: skip
        n, last, first = 0, None, None
        try:
            for p in container.demux(stream):
                if p.size:
                    n += 1
                    if p.pts is not None:
                        first = p.pts if first is None else min(first, p.pts)
                        last = p.pts if last is None else max(last, p.pts)
        except av.FFmpegError as e:
            info["broken"] = f"demuxing failed after {n} packets ({e})"
        try:
            container.seek(0, stream=stream)
            frame = next(iter(container.decode(stream)), None)
        except av.FFmpegError as e:
            frame = None
            info["broken"] = info["broken"] or f"first frame does not decode ({e})"
        if frame is None and n:
            raise VideoError(f"{path}: no frame decodes")
        if frame is not None:
            info["width"], info["height"] = frame.width, frame.height
    info["frames"] = n
    span = (last - first) * tb if last is not None else 0.0
    info["duration"] = span + (1 / info["fps"] if info["fps"] else 0.0)
    return info


def _check_one(job: tuple) -> dict:
    """Probe one clip: {'status': 'ok' | an ERRORS/NOTES name, 'detail': ..., **probe facts}."""
    root, rel, start, end, box = job
    try:
        path = resolve_clip(root, rel)
    except PathOutsideRoot as e:
        return {"status": "escaping", "detail": str(e)}
    if not path.exists():
        return {"status": "missing", "detail": f"{path}: not found"}
    try:
        info = probe(path)
    except (VideoError, OSError) as e:
        return {"status": "undecodable", "detail": str(e)}
    status, detail = "ok", ""
    if info["broken"]:
        status, detail = "partial", info["broken"]
    elif info["header_frames"] > info["frames"] > 0:
        status = "header_overstates"
        detail = f"header says {info['header_frames']} frames, stream has {info['frames']} (or a cut file)"
    if (start is not None or end is not None) and info["duration"] is not None:
        if (start or 0) >= info["duration"] or (end is not None and end > info["duration"] + 0.5):
            status = "segment_outside"
            detail = f"segment [{start}, {end}] s outside the {info['duration']:.2f} s video"
    if box is not None and max(box) > 1.0 and (box[2] > info["width"] or box[3] > info["height"]):
        status, detail = "box_outside", f"box {box} outside the {info['width']}x{info['height']} frame"
    return {"status": status, "detail": detail, **info}


def check_data(dataset: Dataset, workers: int | None = None) -> dict:
    """Probe every clip of `dataset` in `workers` processes; a JSON-able report (see module docstring)."""
    jobs = [(str(dataset.root_of(c)), c.path, c.start, c.end, c.box) for c in dataset.clips]
    if workers is None:  # starting processes costs more than probing a few dozen clips (BENCHMARKS.md)
        workers = min(2, os.cpu_count() or 1) if len(jobs) >= 64 else 0
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_check_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    else:
        results = [_check_one(j) for j in jobs]
    splits = list(dict.fromkeys(c.split for c in dataset.clips))
    per_split = {s: Counter() for s in splits}
    per_class = {s: [0] * len(dataset.classes) for s in splits}
    problems = []
    for c, r in zip(dataset.clips, results, strict=True):
        per_split[c.split]["clips"] += 1
        per_split[c.split][r["status"]] += 1
        for k in c.labels:
            per_class[c.split][k] += 1
        if r["status"] != "ok":
            problems.append({"clip_id": c.clip_id, "split": c.split, "status": r["status"],
                             "detail": r["detail"]})  # fmt: skip
    no_train = [dataset.classes[k] for k, n in enumerate(per_class.get("train", [])) if n == 0]
    return {
        "classes": list(dataset.classes),
        "multi_label": dataset.multi_label,
        "provenance": dataset.provenance,
        "splits": {s: dict(per_split[s]) for s in splits},
        "per_class": per_class,
        "problems": problems,
        "classes_without_train_clips": no_train,
        "errors": sum(1 for p in problems if p["status"] in ERRORS),
    }


def format_report(report: dict, limit: int = 30) -> str:
    """The report as a table: per split, per class, then the problem clips."""
    splits = list(report["splits"])
    cols = ("clips", "ok", *ERRORS, *NOTES)
    lines = [f"{len(report['classes'])} classes ({'multi' if report['multi_label'] else 'single'}-label)"]
    width = [max(len(c), 5) + 2 for c in cols]
    lines.append(f"{'split':<10}" + "".join(f"{c:>{w}}" for c, w in zip(cols, width, strict=True)))
    for s in splits:
        counts = [report["splits"][s].get(c, 0) for c in cols]
        lines.append(f"{s:<10}" + "".join(f"{n:>{w}}" for n, w in zip(counts, width, strict=True)))
    lines.append(f"{'class':<32}" + "".join(f"{s:>10}" for s in splits))
    empty = 0
    for k, name in enumerate(report["classes"]):
        counts = [report["per_class"][s][k] for s in splits]
        if any(counts):
            lines.append(f"{name[:31]:<32}" + "".join(f"{n:>10}" for n in counts))
        else:
            empty += 1
    if empty:
        lines.append(f"({empty} classes have no clip in any split)")
    missing = report["classes_without_train_clips"]
    lines += [f"warning: class {name!r} has no training clip" for name in missing[:5]]
    if len(missing) > 5:
        lines.append(f"warning: ... and {len(missing) - 5} more classes have no training clip")
    if len(report["classes"]) == 1 and not report["multi_label"]:
        lines.append("warning: one class in a single-label dataset: train-head refuses it")
    for p in report["problems"][:limit]:
        lines.append(f"{p['status']:<18} {p['split']:<6} {p['clip_id']}: {p['detail']}")
    if len(report["problems"]) > limit:
        lines.append(f"... and {len(report['problems']) - limit} more (--format json lists all)")
    lines.append(f"{report['errors']} error(s)" if report["errors"] else "no errors")
    return "\n".join(lines)
