"""Something-Something v2: `labels.json` ({template: "index"}) + train.json / validation.json / test.json.

Records are {"id": "78687", "template": "Putting [something] on [something]", ...}; the label is the
template without brackets, looked up in labels.json (beside the file). Videos are `<id>.webm` under the
data root (or frame folders `<id>/`). test.json records have no template: unlabelled clips.
"""

from __future__ import annotations

from pathlib import Path

from .common import Entry, Parsed, err, infer_split, load_json, read_classes, read_text, safe_relpath
from .tinyvirat import record_lines


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Read an SSv2 annotation JSON."""
    split = split or infer_split(path.name)
    text = read_text(path)
    records = load_json(text, path)
    if not isinstance(records, list):
        raise err(path, None, "expected a JSON list of {id, template} records")
    lines = record_lines(text, 1)
    out = Parsed([])
    if (path.parent / "labels.json").is_file():
        out.classes = read_classes(path.parent / "labels.json")
    for k, rec in enumerate(records):
        line = lines[k] if k < len(lines) else None
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("id"), (str, int))
            or isinstance(rec["id"], bool)
        ):
            raise err(path, line, f"record {k}: expected an object with an 'id'")
        vid = str(rec["id"])
        rel = safe_relpath(vid, path, line)
        rel = rel if (root / rel).is_dir() else f"{rel}.webm"
        names: tuple[str, ...] = ()
        if "template" in rec or "label" in rec:
            t = rec.get("template", rec.get("label"))
            if not isinstance(t, str) or not t.strip():
                raise err(path, line, f"record {k}: 'template' must be a non-empty string")
            names = (t.replace("[", "").replace("]", ""),)
        out.entries.append(Entry(rel, names, split, vid, str(path), line))
    return out
