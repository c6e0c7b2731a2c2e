"""HMDB51 split files: `<class>_test_split<N>.txt`, lines `video.avi 1|2|0` (1 train, 2 test, 0 unused).

Give the folder holding the 153 files (split 1 is used) or one of them (its split number is used for the
whole folder). Videos live under `<data root>/<class>/<video>`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import AnnotationError
from .common import Entry, Parsed, err, read_text, safe_relpath

NAME = re.compile(r"(.+)_test_split(\d+)\.txt")
MARK = {"1": "train", "2": "test"}


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Read every class file of one HMDB51 split."""
    if not path.is_dir() and not NAME.fullmatch(path.name):
        raise AnnotationError(f"{path}: not an HMDB51 split file (<class>_test_split<N>.txt) or their folder")
    folder, number = (path, None) if path.is_dir() else (path.parent, NAME.fullmatch(path.name).group(2))
    files = sorted(f for f in folder.iterdir() if NAME.fullmatch(f.name))
    if not files:
        raise AnnotationError(f"{folder}: no <class>_test_split<N>.txt files")
    number = number or min(NAME.fullmatch(f.name).group(2) for f in files)
    out = Parsed([])
    for f in files:
        cls, n = NAME.fullmatch(f.name).groups()
        if n != number:
            continue
        for i, raw in enumerate(read_text(f).split("\n"), 1):
            parts = raw.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise err(f, i, f"expected 'video mark' with mark 0/1/2, got {raw.strip()!r}")
            if parts[1] == "0" or (split is not None and MARK[parts[1]] != split):
                continue
            rel = safe_relpath(f"{cls}/{parts[0]}", f, i)
            out.entries.append(Entry(rel, (cls,), MARK[parts[1]], rel, str(f), i))
    return out
