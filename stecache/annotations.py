"""Annotation readers: mmaction2 lists, TinyVIRAT-v2 JSON, CSV with a header, folder-per-class.

Every reader returns the same record, `Clip(path, labels, split, clip_id)`, with `path` relative to a data
root (posix). A path that would leave the root, an empty or unknown label, a duplicate clip and every
other malformed line raise `AnnotationError` naming the file and line; nothing is skipped silently.
`load_dataset_dir` reads the folder `stecache synth` writes (classes.txt + train/val/test.txt lists).
The formats, with examples, are described in data/README.md.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import AnnotationError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
FORMATS = ("mmaction", "tinyvirat", "csv", "folder")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SPLIT_NAMES |= {"test": "test", "testing": "test"}
_INDEX = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() would also accept '٣' and 5000-digit strings


@dataclass(frozen=True)
class Clip:
    """One annotated video."""

    path: str  # relative to the data root, posix
    labels: tuple[int, ...]  # class indices; () = unlabelled (e.g. a TinyVIRAT test file)
    split: str  # "train" | "val" | "test" | other
    clip_id: str  # unique id (default: path)


@dataclass(frozen=True)
class Dataset:
    """Clips of all splits plus the class list they index into."""

    root: Path
    classes: tuple[str, ...]
    clips: tuple[Clip, ...]  # deterministic order: by split order, then file order
    multi_label: bool

    def split(self, name: str) -> list[Clip]:
        """The clips of one split, in file order."""
        return [c for c in self.clips if c.split == name]


def _err(source: object, line: int | None, msg: str) -> AnnotationError:
    return AnnotationError(f"{source}:{line}: {msg}" if line else f"{source}: {msg}")


def safe_relpath(path: str, source: object, line: int | None) -> str:
    """Normalise a clip path to posix relative form; reject absolute paths and paths that escape the root."""
    if not path or "\x00" in path:
        raise _err(source, line, "empty clip path" if not path else "NUL character in clip path")
    p = path.replace("\\", "/")
    if p.startswith("/") or re.match(r"[A-Za-z]:/", p):
        raise _err(source, line, f"absolute path {path!r}; paths must be relative to the data root")
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise _err(source, line, f"path {path!r} escapes the data root")
    return norm


def infer_split(name: str) -> str:
    """'tiny_train_v2.json' -> 'train', 'val.txt' -> 'val'; 'all' when the name says nothing."""
    for token in re.split(r"[^a-z]+", Path(name).stem.lower()):
        if token in SPLIT_NAMES:
            return SPLIT_NAMES[token]
    return "all"


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names from classes.txt (one per line) or a class_map.json ({name: index}, indices 0..K-1)."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        try:
            cmap = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, >4300-digit ints, deep nesting
            raise _err(path, getattr(e, "lineno", None), f"invalid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(cmap, dict) or not cmap or not all(k.strip() for k in cmap):
            raise _err(path, None, "class map must be a non-empty JSON object {name: index}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in cmap.values()):
            raise _err(path, None, "class map values must be integer indices")
        if sorted(cmap.values()) != list(range(len(cmap))):
            raise _err(path, None, f"class indices must be 0..{len(cmap) - 1}, each once")
        return tuple(sorted(cmap, key=cmap.__getitem__))
    if not text.strip():
        raise _err(path, None, "no class names")
    names: list[str] = []
    for i, raw in enumerate(text.rstrip().split("\n"), 1):
        name = raw.strip()
        if not name:
            raise _err(path, i, "blank line inside the class list (class index = line number - 1)")
        if name in names:
            raise _err(path, i, f"duplicate class name {name!r}")
        names.append(name)
    return tuple(names)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise _err(path, line, "not UTF-8 text") from None


def _label(token: str, classes: Sequence[str] | None, source: object, line: int) -> int:
    """One label token -> class index: a class name (when classes are known) or a 0-based index."""
    if classes is not None and token in classes:
        return classes.index(token)
    if not _INDEX.fullmatch(token):
        if classes is None:
            raise _err(source, line, f"label {token!r} is not an index; give a class list to use names")
        raise _err(source, line, f"unknown label {token!r}; known: {', '.join(classes)}")
    idx = int(token)
    if classes is not None and idx >= len(classes):
        raise _err(source, line, f"label index {idx} out of range: {len(classes)} classes")
    return idx


def _labels(tokens: Sequence[str], classes, source, line) -> tuple[int, ...]:
    if not tokens or any(not t for t in tokens):
        raise _err(source, line, "empty label")
    labels = tuple(_label(t, classes, source, line) for t in tokens)
    if len(set(labels)) != len(labels):
        raise _err(source, line, f"label repeated in {' '.join(tokens)!r}")
    return labels


def _check_unique(clips: list[Clip], lines: list[int], source) -> list[Clip]:
    seen: dict[str, int] = {}
    for clip, line in zip(clips, lines, strict=True):
        if clip.clip_id in seen:
            raise _err(source, line, f"duplicate clip {clip.clip_id!r} (first on line {seen[clip.clip_id]})")
        seen[clip.clip_id] = line
    return clips


def parse_mmaction(text: str, source: object, classes=None, split: str = "all") -> list[Clip]:
    """mmaction2 VideoDataset list: 'path label' or 'path l1 l2 ...' per line, whitespace-separated."""
    clips, lines = [], []
    for i, raw in enumerate(text.split("\n"), 1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) == 1:
            raise _err(source, i, f"no label after {tokens[0]!r} (expected 'path label [label ...]')")
        path = safe_relpath(tokens[0], source, i)
        clips.append(Clip(path, _labels(tokens[1:], classes, source, i), split, path))
        lines.append(i)
    return _check_unique(clips, lines, source)


def parse_tinyvirat(text: str, source: object, classes=None, split: str = "all") -> list[Clip]:
    """TinyVIRAT-v2 JSON: a list of {"id", "path", "dim", "label": [names]} (or {"tubes": [...]})."""
    try:
        records = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, >4300-digit ints, deep nesting
        raise _err(source, getattr(e, "lineno", None), f"invalid JSON ({getattr(e, 'msg', e)})") from None
    depth = 1
    if isinstance(records, dict) and "tubes" in records:  # TinyVIRAT v1 layout
        records, depth = records["tubes"], 2
    if not isinstance(records, list):
        raise _err(source, None, "expected a JSON list of clip records")
    line_of = _record_lines(text, depth)
    unlabelled = not any(isinstance(r, dict) and "label" in r for r in records)  # a test file
    clips, lines = [], []
    for k, rec in enumerate(records):
        where = f"record {k}"
        line = line_of[k] if k < len(line_of) else None
        if not isinstance(rec, dict):
            raise _err(source, line, f"{where}: expected an object, got {type(rec).__name__}")
        if not isinstance(rec.get("path"), str):
            raise _err(source, line, f"{where}: missing or non-string 'path'")
        path = safe_relpath(rec["path"], source, line)
        if "dim" in rec and not (
            isinstance(rec["dim"], list) and all(isinstance(d, int) and d >= 0 for d in rec["dim"])
        ):
            raise _err(source, line, f"{where}: 'dim' must be a list of non-negative integers")
        if unlabelled:
            labels: tuple[int, ...] = ()
        else:
            names = rec.get("label")
            if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
                raise _err(source, line, f"{where}: 'label' must be a list of class names")
            labels = _labels([str(n) for n in names], classes, source, line)
        cid = rec.get("id", path)
        if not isinstance(cid, (str, int)) or isinstance(cid, bool):
            raise _err(source, line, f"{where}: 'id' must be a string")
        clips.append(Clip(path, labels, split, f"{split}/{cid}" if "id" in rec else path))
        lines.append(line)
    return _check_unique(clips, lines, source)


def _record_lines(text: str, list_depth: int) -> list[int]:
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


def parse_csv(text: str, source: object, classes=None, split: str | None = None) -> list[Clip]:
    """CSV with a header row: path,label[,split][,id]; labels are names or indices, ';' for multi-label."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise _err(source, 1, f"header must name 'path' and 'label' columns, got {','.join(header)!r}")
        if len(set(header)) != len(header):
            raise _err(source, 1, "duplicate column name in header")
        col = {name: header.index(name) for name in header}
        idcol = col.get("id", col.get("clip_id"))
        default_split = split or infer_split(str(source))
        clips, lines = [], []
        for row in reader:
            i = reader.line_num  # the row's last line (a quoted field may span lines)
            if not row or all(not f.strip() for f in row):
                continue
            if len(row) != len(header):
                raise _err(source, i, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
            path = safe_relpath(row[col["path"]].strip(), source, i)
            labels = _labels([t.strip() for t in row[col["label"]].split(";")], classes, source, i)
            row_split = row[col["split"]].strip() if "split" in col else default_split
            if not row_split:
                raise _err(source, i, "empty split")
            if split is not None and "split" in col and row_split != split:
                continue  # a split column plus split=... selects rows
            cid = row[idcol].strip() if idcol is not None else path
            if not cid:
                raise _err(source, i, "empty clip id")
            clips.append(Clip(path, labels, row_split, cid))
            lines.append(i)
    except csv.Error as e:
        raise _err(source, reader.line_num, f"CSV error: {e}") from None
    return _check_unique(clips, lines, source)


def scan_folder(folder: Path, data_root: Path, classes=None, split: str = "all") -> tuple[list[Clip], tuple]:
    """Folder-per-class: folder/<class>/<clip>.mp4; returns the clips and the class list used."""
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: not a directory")
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise AnnotationError(f"{folder}: no class folders (expected {folder}/<class>/<clip>.mp4)")
    names = tuple(classes) if classes is not None else tuple(subdirs)
    unknown = [d for d in subdirs if d not in names]
    if unknown:
        raise AnnotationError(f"{folder}/{unknown[0]}: unknown class folder; known: {', '.join(names)}")
    try:
        rel = folder.resolve().relative_to(data_root.resolve())
    except ValueError:
        raise AnnotationError(f"{folder}: not inside the data root {data_root}") from None
    clips = []
    for name in subdirs:
        for f in sorted((folder / name).iterdir()):
            if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES and not f.name.startswith("."):
                path = (rel / name / f.name).as_posix()
                clips.append(Clip(path, (names.index(name),), split, path))
    if not clips:
        raise AnnotationError(f"{folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) in class folders")
    return clips, names


PARSERS = {"mmaction": parse_mmaction, "tinyvirat": parse_tinyvirat, "csv": parse_csv}


def guess_format(path: Path) -> str:
    """Format from the file suffix: .txt/.lst/.list mmaction, .json tinyvirat, .csv csv, directory folder."""
    if path.is_dir():
        return "folder"
    fmt = {".txt": "mmaction", ".lst": "mmaction", ".list": "mmaction", ".json": "tinyvirat", ".csv": "csv"}
    if path.suffix.lower() not in fmt:
        raise AnnotationError(f"{path}: cannot tell the format from the suffix; pass fmt= one of {FORMATS}")
    return fmt[path.suffix.lower()]


def read_annotations(
    path: str | Path,
    fmt: str | None = None,
    *,
    data_root: str | Path,
    classes: Sequence[str] | str | Path | None = None,
    split: str | None = None,
) -> list[Clip]:
    """Read one annotation file (or class folder) into clips; `classes` is a list or a classes file."""
    path, data_root = Path(path), Path(data_root)
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r}; one of {FORMATS}")
    if isinstance(classes, (str, Path)):
        classes = read_classes(classes)
    elif classes is not None:
        classes = tuple(classes)
    if fmt == "tinyvirat" and classes is None and (path.parent / "class_map.json").is_file():
        classes = read_classes(path.parent / "class_map.json")
    if fmt == "folder":
        return scan_folder(path, data_root, classes, split or infer_split(path.name))[0]
    text = _read_text(path)
    if fmt == "csv":
        return parse_csv(text, path, classes, split)
    return PARSERS[fmt](text, path, classes, split or infer_split(path.name))


def load_dataset_dir(root: str | Path) -> Dataset:
    """The folder `stecache synth` writes: classes.txt, train/val/test.txt lists, optional dataset.json."""
    root = Path(root)
    if not (root / "classes.txt").is_file():
        raise AnnotationError(f"{root}: no classes.txt (expected the layout `stecache synth` writes)")
    classes = read_classes(root / "classes.txt")
    meta: dict = {}
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text())
        except json.JSONDecodeError as e:
            raise _err(root / "dataset.json", e.lineno, f"invalid JSON ({e.msg})") from None
    splits = meta.get("splits") or {s: f"{s}.txt" for s in ("train", "val", "test")}
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        raise AnnotationError(f"{root / 'dataset.json'}: 'splits' must map split names to list files")
    clips: list[Clip] = []
    for name, listfile in splits.items():
        if (root / listfile).is_file() or meta:
            clips += read_annotations(
                root / listfile, "mmaction", data_root=root, classes=classes, split=name
            )
    if not clips:
        raise AnnotationError(f"{root}: no train.txt / val.txt / test.txt lists")
    multi = bool(meta.get("multi_label", any(len(c.labels) != 1 for c in clips)))
    return Dataset(root=root, classes=classes, clips=tuple(clips), multi_label=multi)
