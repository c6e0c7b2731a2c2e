"""Folder per class: `<folder>/<class>/<clip>.mp4`, or `<folder>/<class>/<clip>/img_00001.jpg` frame folders.

The class names are the folder names; `build_dataset` takes the sorted union over all splits, so
`train/{jump,run,walk}` and `val/{run,walk}` give `run` the same index in both.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AnnotationError
from .common import FRAME_SUFFIXES, VIDEO_SUFFIXES, Entry, Parsed, infer_split


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Scan a class-per-folder directory (must lie inside the data root)."""
    split = split or infer_split(path.name)
    if not path.is_dir():
        raise AnnotationError(f"{path}: not a directory")
    subdirs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise AnnotationError(f"{path}: no class folders (expected {path}/<class>/<clip>.mp4)")
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        raise AnnotationError(f"{path}: not inside the data root {root}") from None
    out = Parsed([], folders=tuple(subdirs))
    for name in subdirs:
        for f in sorted((path / name).iterdir()):
            if f.name.startswith("."):
                continue
            video = f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES
            if video or (f.is_dir() and is_frame_folder(f)):
                p = (rel / name / f.name).as_posix()
                out.entries.append(Entry(p, (name,), split, p, str(path / name), None))
    if not out.entries:
        raise AnnotationError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)}) in class folders")
    return out


def is_frame_folder(d: Path) -> bool:
    """A folder holding image frames (img_00001.jpg ... as mmaction2's RawframeDataset expects)."""
    return any(f.suffix.lower() in FRAME_SUFFIXES for f in d.iterdir())
