"""CSV with a header row: `path,label[,split][,id][,start,end][,x1,y1,x2,y2]`; Kinetics CSVs too.

Labels are names or indices; `;` separates several labels and makes the file multi-label. A `split`
column lets one file hold every split. `start,end` (seconds) cut a segment out of a longer video and
`x1,y1,x2,y2` (pixels, or all in 0-1) crop a box, so many clips can come from one file. The Kinetics
layout (`label,youtube_id,time_start,time_end,split`) names videos `<youtube_id>_<start>_<end>.mp4` as the
common downloaders write them (found anywhere under the data root), else `<youtube_id>.mp4` cut to
[time_start, time_end].
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .common import (
    VIDEO_SUFFIXES,
    Entry,
    Parsed,
    err,
    infer_split,
    parse_box,
    parse_segment,
    read_text,
    safe_relpath,
)

BOX = ("x1", "y1", "x2", "y2")


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Read a CSV annotation file (the Kinetics layout included)."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    out = Parsed([], multi_label=multi_label)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        kinetics = "youtube_id" in header
        if kinetics:
            header = [{"time_start": "start", "time_end": "end"}.get(h, h) for h in header]
            need = ("youtube_id", "start", "end")  # the test file has no label column
        else:
            need = ("path", "label")
        if not all(n in header for n in need):
            raise err(path, 1, f"header must name {', '.join(need)} columns, got {','.join(header)!r}")
        if len(set(header)) != len(header):
            raise err(path, 1, "duplicate column name in header")
        has_box = [b in header for b in BOX]
        if any(has_box) and not all(has_box):
            raise err(path, 1, "a box needs all four columns x1,y1,x2,y2")
        if ("start" in header) != ("end" in header):
            raise err(path, 1, "a segment needs both columns start,end")
        col = {name: header.index(name) for name in header}
        idcol = col.get("id", col.get("clip_id"))
        default_split = split or infer_split(str(path))
        files = _index(root) if kinetics else {}
        seen: dict[str, int] = {}
        for row in reader:
            i = reader.line_num  # the row's last line (a quoted field may span lines)
            if not row or all(not f.strip() for f in row):
                continue
            if len(row) != len(header):
                raise err(path, i, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
            f = {name: row[j].strip() for name, j in col.items()}
            row_split = f.get("split", default_split)
            if not row_split:
                raise err(path, i, "empty split")
            if split is not None and "split" in col and row_split != split:
                continue  # a split column plus split=... selects rows
            start, end = parse_segment(f["start"], f["end"], path, i) if "start" in f else (None, None)
            if kinetics:
                yid = f["youtube_id"]
                trimmed = f"{yid}_{int(start or 0):06d}_{int(end or 0):06d}"
                if trimmed in files:
                    rel, start, end = files[trimmed], None, None
                else:
                    rel = files.get(yid, f"{yid}.mp4")
                rel = safe_relpath(rel, path, i)
            else:
                rel = safe_relpath(f["path"], path, i)
            tokens = [t.strip() for t in f.get("label", "").split(";")]
            if len(tokens) > 1:
                out.multi_label = True
            names = () if tokens == [""] and (row_split == "test" or "label" not in f) else tuple(tokens)
            if any(not t for t in names):
                raise err(path, i, "empty label")
            if len(set(names)) != len(names):
                raise err(path, i, f"label repeated in {f['label']!r}")
            box = parse_box([f[b] for b in BOX], path, i) if all(has_box) else None
            cid = f[header[idcol]] if idcol is not None else _clip_id(rel, start, end, box)
            if not cid:
                raise err(path, i, "empty clip id")
            if cid in seen:
                raise err(path, i, f"duplicate clip {cid!r} (first on line {seen[cid]})")
            seen[cid] = i
            out.entries.append(Entry(rel, names, row_split, cid, str(path), i, start, end, box))
    except csv.Error as e:
        raise err(path, reader.line_num, f"CSV error: {e}") from None
    return out


def _clip_id(rel: str, start, end, box) -> str:
    """The path, plus the segment and box when the row names them (many clips may share one file)."""
    cid = rel
    if start is not None or end is not None:
        cid += f"@{start if start is not None else ''}-{end if end is not None else ''}"
    if box is not None:
        cid += "#" + ",".join(f"{v:g}" for v in box)
    return cid


def _index(root: Path) -> dict[str, str]:
    """Video files under `root` by stem -> relative posix path (Kinetics names files by YouTube id)."""
    out: dict[str, str] = {}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
                out.setdefault(p.stem, p.relative_to(root).as_posix())
    return out
