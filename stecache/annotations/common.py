"""Records every reader returns, and the helpers they share (paths, labels, class files, messages).

A reader turns one annotation file into `Entry` records that carry label *names* (the tokens as written);
`dataset.build_dataset` then maps every split's names onto one class list. `Clip` is the resolved record
a cache row is made from: its labels are indices into that list.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AnnotationError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SPLIT_NAMES |= {"test": "test", "testing": "test"}
INDEX = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() would also accept '٣' and 5000-digit strings

Box = tuple[float, float, float, float]  # x1, y1, x2, y2: pixels, or all in [0, 1] = normalised


@dataclass(frozen=True)
class Clip:
    """One annotated clip: a video file, a segment of one, or a folder of frames; optionally a box."""

    path: str  # relative to the data root, posix
    labels: tuple[int, ...]  # class indices; () = unlabelled (e.g. a TinyVIRAT test file)
    split: str  # "train" | "val" | "test" | other
    clip_id: str  # unique id (default: path)
    start: float | None = None  # segment start, seconds (None = from the first frame)
    end: float | None = None  # segment end, seconds (None = to the last frame)
    box: Box | None = None  # region cropped before the backbone's resize/crop
    root: str | None = None  # this clip's data root when it is not the dataset's (per-split roots)


@dataclass(frozen=True)
class Entry:
    """One parsed annotation record, labels still as the names (tokens) the file wrote."""

    path: str
    names: tuple[str, ...]
    split: str
    clip_id: str
    source: str  # file the record came from
    line: int | None  # line in that file (None where the format has no lines)
    start: float | None = None
    end: float | None = None
    box: Box | None = None
    root: str | None = None


@dataclass
class Parsed:
    """What one reader found in one file."""

    entries: list[Entry]
    classes: tuple[str, ...] | None = None  # the class list the format itself carries, if any
    multi_label: bool = False  # declared by the format (TinyVIRAT, CSV with ';') or the user
    indices: bool = False  # numeric labels are class indices by the format's convention (mmaction2 lists)
    warnings: list[str] = field(default_factory=list)
    folders: tuple[str, ...] = ()  # class folder names, empty ones included (they join the sorted union)


def err(source: object, line: int | None, msg: str) -> AnnotationError:
    """An AnnotationError 'file:line: msg'."""
    return AnnotationError(f"{source}:{line}: {msg}" if line else f"{source}: {msg}")


def safe_relpath(path: str, source: object, line: int | None) -> str:
    """Normalise a clip path to posix relative form; reject absolute paths, URLs and escapes from the root."""
    if not path or "\x00" in path:
        raise err(source, line, "empty clip path" if not path else "NUL character in clip path")
    p = path.replace("\\", "/")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", p) and not re.match(r"[A-Za-z]:/", p):
        raise err(
            source, line, f"{path!r} is a URL or protocol; clips must be local files under the data root"
        )
    if p.startswith("/") or re.match(r"[A-Za-z]:/", p):
        raise err(source, line, f"absolute path {path!r}; paths must be relative to the data root")
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise err(source, line, f"path {path!r} escapes the data root")
    return norm


def infer_split(name: str) -> str:
    """'tiny_train_v2.json' -> 'train', 'val.txt' -> 'val'; 'all' when the name says nothing."""
    for token in re.split(r"[^a-z]+", Path(name).stem.lower()):
        if token in SPLIT_NAMES:
            return SPLIT_NAMES[token]
    return "all"


def read_text(path: Path) -> str:
    """A UTF-8 text file (BOM allowed), or an AnnotationError naming the line with the bad byte."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise err(path, line, "not UTF-8 text") from None


def load_json(text: str, source: object):
    """Parsed JSON, or an AnnotationError with the line."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, >4300-digit ints, deep nesting
        raise err(source, getattr(e, "lineno", None), f"invalid JSON ({getattr(e, 'msg', e)})") from None


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names from classes.txt (one per line) or a class_map.json ({name: index}, indices 0..K-1)."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() == ".json":
        cmap = load_json(text, path)
        if not isinstance(cmap, dict) or not cmap or not all(k.strip() for k in cmap):
            raise err(path, None, "class map must be a non-empty JSON object {name: index}")
        if all(isinstance(v, str) and INDEX.fullmatch(v) for v in cmap.values()):
            cmap = {k: int(v) for k, v in cmap.items()}  # SSv2 labels.json writes the indices as strings
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in cmap.values()):
            raise err(path, None, "class map values must be integer indices")
        if sorted(cmap.values()) != list(range(len(cmap))):
            raise err(path, None, f"class indices must be 0..{len(cmap) - 1}, each once")
        return tuple(sorted(cmap, key=cmap.__getitem__))
    if not text.strip():
        raise err(path, None, "no class names")
    names: list[str] = []
    for i, raw in enumerate(text.rstrip().split("\n"), 1):
        name = raw.strip()
        if not name:
            raise err(path, i, "blank line inside the class list (class index = line number - 1)")
        if name in names:
            raise err(path, i, f"duplicate class name {name!r}")
        names.append(name)
    return tuple(names)


def parse_box(values: list[str], source: object, line: int | None) -> Box | None:
    """x1,y1,x2,y2 from four fields (all empty = no box); pixels, or all in [0, 1] = normalised."""
    if all(not v.strip() for v in values):
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except ValueError:
        raise err(source, line, f"box {','.join(values)!r}: expected four numbers x1,y1,x2,y2") from None
    if not all(map(_finite, (x1, y1, x2, y2))) or min(x1, y1) < 0 or x2 <= x1 or y2 <= y1:
        raise err(source, line, f"box {x1},{y1},{x2},{y2}: need 0 <= x1 < x2 and 0 <= y1 < y2")
    if max(x1, y1, x2, y2) > 1 and min(x2 - x1, y2 - y1) < 1:  # e.g. 0.1,0.1,0.5,2: a typo, not pixels
        msg = "in pixels (a value > 1) but under one pixel wide or high; normalised needs all four in [0, 1]"
        raise err(source, line, f"box {x1},{y1},{x2},{y2}: {msg}")
    return (x1, y1, x2, y2)


def parse_segment(
    start: str, end: str, source: object, line: int | None
) -> tuple[float | None, float | None]:
    """(start, end) seconds from two fields (empty = open); end > start >= 0."""
    try:
        s = float(start) if start.strip() else None
        e = float(end) if end.strip() else None
    except ValueError:
        raise err(source, line, f"segment {start!r},{end!r}: start/end must be seconds") from None
    if (s is not None and (not _finite(s) or s < 0)) or (e is not None and (not _finite(e) or e <= (s or 0))):
        raise err(source, line, f"segment {start},{end}: need 0 <= start < end (seconds)")
    return s, e


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
