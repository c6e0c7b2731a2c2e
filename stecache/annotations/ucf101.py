"""UCF101 split files: `classInd.txt` (`1 ApplyEyeMakeup`) + `trainlist0N.txt` / `testlist0N.txt`.

Train lines are `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1` (1-based class index); test lines carry
no label, so the class is the path's folder. The class list is classInd.txt, in its index order.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import INDEX, Entry, Parsed, err, read_text, safe_relpath

NAME = re.compile(r"(train|test)list0?\d+\.txt", re.IGNORECASE)


def read_class_index(path: Path) -> tuple[str, ...]:
    """classInd.txt: `index name` per line, indices 1..K each once."""
    pairs = []
    for i, raw in enumerate(read_text(path).split("\n"), 1):
        if not raw.strip():
            continue
        parts = raw.split()
        if len(parts) != 2 or not INDEX.fullmatch(parts[0]):
            raise err(path, i, f"expected 'index name', got {raw.strip()!r}")
        pairs.append((int(parts[0]), parts[1]))
    if sorted(k for k, _ in pairs) != list(range(1, len(pairs) + 1)):
        raise err(path, None, f"class indices must be 1..{len(pairs)}, each once")
    return tuple(name for _, name in sorted(pairs))


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Read a UCF101 trainlist/testlist file (classInd.txt beside it)."""
    cind = path.parent / "classInd.txt"
    if not cind.is_file():
        raise err(path, None, f"UCF101 list needs classInd.txt beside it ({cind} not found)")
    names = read_class_index(cind)
    split = split or ("train" if path.name.lower().startswith("train") else "test")
    out = Parsed([], classes=names)
    seen: dict[str, int] = {}
    for i, raw in enumerate(read_text(path).split("\n"), 1):
        parts = raw.split()
        if not parts:
            continue
        rel = safe_relpath(parts[0], path, i)
        if len(parts) == 2:
            if not INDEX.fullmatch(parts[1]) or not 1 <= int(parts[1]) <= len(names):
                raise err(path, i, f"class index {parts[1]!r} not in 1..{len(names)} of {cind}")
            name = names[int(parts[1]) - 1]
        elif len(parts) == 1:
            name = rel.split("/")[0]
            if "/" not in rel or name not in names:
                raise err(path, i, f"cannot tell the class of {rel!r}: its folder is not in {cind}")
        else:
            raise err(path, i, f"expected 'path [index]', got {raw.strip()!r}")
        if rel in seen:
            raise err(path, i, f"duplicate clip {rel!r} (first on line {seen[rel]})")
        seen[rel] = i
        out.entries.append(Entry(rel, (name,), split, rel, str(path), i))
    return out
