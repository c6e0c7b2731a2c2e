"""TinyVIRAT-v2 JSON: a list of {"id", "path", "dim", "label": [names]} (v1: {"tubes": [...]}).

Multi-label by definition. The class list is the `class_map.json` beside the file. With `--data-root` the
folder holding `videos/`, paths resolve under `videos/<split>/` (the layout TinyVIRAT ships). A file with
no `label` key anywhere (the public test file) gives unlabelled clips.
"""

from __future__ import annotations

from pathlib import Path

from .common import Entry, Parsed, err, infer_split, load_json, read_classes, read_text, safe_relpath


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Read a TinyVIRAT JSON file."""
    split = split or infer_split(path.name)
    text = read_text(path)
    records = load_json(text, path)
    depth = 1
    if isinstance(records, dict) and "tubes" in records:  # TinyVIRAT v1 layout
        records, depth = records["tubes"], 2
    if not isinstance(records, list):
        raise err(path, None, "expected a JSON list of clip records")
    line_of = record_lines(text, depth)
    unlabelled = not any(isinstance(r, dict) and "label" in r for r in records)  # a test file
    sub = f"videos/{split}/" if (root / "videos" / split).is_dir() else ""  # TinyVIRAT_V2/videos/<split>/
    out = Parsed([], multi_label=True)
    if (path.parent / "class_map.json").is_file():
        out.classes = read_classes(path.parent / "class_map.json")
    for k, rec in enumerate(records):
        where = f"record {k}"
        line = line_of[k] if k < len(line_of) else None
        if not isinstance(rec, dict):
            raise err(path, line, f"{where}: expected an object, got {type(rec).__name__}")
        if not isinstance(rec.get("path"), str):
            raise err(path, line, f"{where}: missing or non-string 'path'")
        rel = safe_relpath(sub + rec["path"], path, line)
        if "dim" in rec and not (
            isinstance(rec["dim"], list) and all(isinstance(d, int) and d >= 0 for d in rec["dim"])
        ):
            raise err(path, line, f"{where}: 'dim' must be a list of non-negative integers")
        names: tuple[str, ...] = ()
        if not unlabelled:
            labels = rec.get("label")
            if not isinstance(labels, list) or not all(isinstance(n, (str, int)) for n in labels):
                raise err(path, line, f"{where}: 'label' must be a list of class names")
            names = tuple(str(n) for n in labels)
            if not names or any(not n for n in names):
                raise err(path, line, f"{where}: empty label")
            if len(set(names)) != len(names):
                raise err(path, line, f"{where}: label repeated in {list(names)}")
        cid = rec.get("id", rec["path"])
        if not isinstance(cid, (str, int)) or isinstance(cid, bool):
            raise err(path, line, f"{where}: 'id' must be a string")
        out.entries.append(
            Entry(rel, names, split, f"{split}/{cid}" if "id" in rec else rel, str(path), line)
        )
    return out


def record_lines(text: str, list_depth: int) -> list[int]:
    """Line where each element of the clip list (at nesting depth `list_depth`) starts, for messages."""
    lines, depth, line, in_str, esc, expect = [], 0, 1, False, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
            continue
        if ch.isspace():
            continue
        if expect and depth == list_depth and ch != "]":
            lines.append(line)
            expect = False
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            expect = ch == "[" and depth == list_depth
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == list_depth:
            expect = True
    return lines
