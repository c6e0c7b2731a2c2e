"""One dataset from many annotation files: one class list shared by all splits, labels resolved by name.

The class list comes from `--classes`, else from the format (TinyVIRAT class_map.json, UCF101 classInd.txt,
SSv2 labels.json), else from the labels themselves: the sorted union of names over all splits, or
'0'..'K-1' when every label is a bare index (K from all splits together). A clip's label is the index of
its name in that list, never a per-split numbering. Numeric tokens with a class list are read as names
only when every token is one of its names and the format writes names; when both readings fit and give
different classes, a warning says which was chosen.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AnnotationError
from .common import INDEX, Clip, Entry, Parsed, err


@dataclass(frozen=True)
class Dataset:
    """Clips of all splits plus the class list they index into."""

    root: Path
    classes: tuple[str, ...]
    clips: tuple[Clip, ...]  # deterministic order: by split order, then file order
    multi_label: bool
    provenance: dict = field(default_factory=dict, compare=False)  # e.g. how val was held out

    def split(self, name: str) -> list[Clip]:
        """The clips of one split, in file order."""
        return [c for c in self.clips if c.split == name]

    def root_of(self, clip: Clip) -> Path:
        """The data root `clip.path` is relative to."""
        return Path(clip.root) if clip.root else Path(self.root)


def build_dataset(
    parsed: Sequence[Parsed],
    root: str | Path,
    classes: Sequence[str] | None = None,
    multi_label: bool = False,
    classes_source: str = "--classes",
) -> Dataset:
    """Resolve every entry's label names against one class list; see the module docstring."""
    entries = [e for p in parsed for e in p.entries]
    if not entries:
        raise AnnotationError(f"no clips in {', '.join(sorted({e for p in parsed for e in _sources(p)}))}")
    for p in parsed:
        for w in p.warnings:
            warnings.warn(w, stacklevel=2)
    multi = multi_label or any(p.multi_label for p in parsed)
    carried = {p.classes for p in parsed if p.classes is not None}
    if classes is None and len(carried) > 1:
        raise AnnotationError("the annotation files carry different class lists; pass one with --classes")
    if classes is None and carried:
        classes, classes_source = next(iter(carried)), "the class list beside the annotations"
    indices = any(p.indices for p in parsed)
    tokens = sorted({n for e in entries for n in e.names})
    folders = {n for p in parsed for n in p.folders}
    if classes is None:
        if tokens and all(INDEX.fullmatch(t) for t in tokens):
            k = 1 + max(int(t) for t in tokens)
            classes = tuple(str(i) for i in range(k))
            as_index, classes_source = True, "label indices (0..K-1 over all splits)"
        else:
            classes, as_index = tuple(sorted(set(tokens) | folders)), False
            classes_source = "label names (sorted, over all splits)"
        lookup = {t: int(t) if as_index else classes.index(t) for t in tokens}
    else:
        classes = tuple(classes)
        lookup = _resolve(entries, tokens, classes, indices, classes_source)
        unknown = sorted(folders - set(classes))
        if unknown:
            raise AnnotationError(f"class folder {unknown[0]!r} is not in the classes from {classes_source}")
    clips, seen = [], {}
    for e in entries:
        labels = tuple(lookup[n] for n in e.names)
        if len(labels) > 1 and not multi:
            raise err(e.source, e.line, f"{len(labels)} labels in a single-label dataset; pass --multi-label "
                      "if clips may carry several labels")  # fmt: skip
        if e.clip_id in seen:
            o = seen[e.clip_id]
            where = f"split {e.split} here, split {o.split} in" if e.split != o.split else "first in"
            raise err(e.source, e.line, f"clip {e.clip_id!r} appears again ({where} {o.source}:{o.line})")
        seen[e.clip_id] = e
        clips.append(Clip(e.path, labels, e.split, e.clip_id, e.start, e.end, e.box, e.root))
    return Dataset(Path(root), classes, tuple(clips), multi, {"classes_from": classes_source})


def _resolve(entries: list[Entry], tokens: list[str], classes: tuple[str, ...], indices: bool, src) -> dict:
    """Each label token -> class index. Names and indices may mix only while no class name is a number."""
    k = len(classes)
    is_index = {t: bool(INDEX.fullmatch(t)) and int(t) < k for t in tokens}
    if not any(INDEX.fullmatch(c) for c in classes):  # unambiguous: digits are indices, the rest names
        bad = [t for t in tokens if t not in classes and not is_index[t]]
        if bad:
            _unknown(entries, bad[0], classes, src)
        return {t: classes.index(t) if t in classes else int(t) for t in tokens}
    names_fit = all(t in classes for t in tokens)
    index_fit = all(is_index.values())
    if names_fit and index_fit:
        as_index = indices  # a list format writes indices; CSV/JSON/folders write names
        if any(classes.index(t) != int(t) for t in tokens):
            how = "indices (the list format's convention)" if as_index else "class names"
            warnings.warn(
                f"labels {', '.join(tokens[:5])} are both names and indices of the classes from {src}, "
                f"which differ; read as {how}",
                stacklevel=3,
            )
    elif names_fit or index_fit:
        as_index = index_fit
    else:
        bad = [t for t in tokens if t not in classes and not is_index[t]]
        if bad:
            _unknown(entries, bad[0], classes, src)
        idx = next(t for t in tokens if t not in classes)  # fits only as an index
        name = next(t for t in tokens if not is_index[t])  # fits only as a name
        e = next(e for e in entries if idx in e.names)
        raise err(e.source, e.line, f"label {idx!r} is no class name while {name!r} is no index; the class "
                  f"names from {src} are numbers, so labels must be all names or all indices")  # fmt: skip
    return {t: int(t) if as_index else classes.index(t) for t in tokens}


def _unknown(entries: list[Entry], bad: str, classes: tuple[str, ...], src) -> None:
    e = next(e for e in entries if bad in e.names)
    if INDEX.fullmatch(bad):
        raise err(e.source, e.line, f"label index {bad} out of range: {len(classes)} classes (from {src})")
    known = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
    raise err(e.source, e.line, f"unknown label {bad!r}; known (from {src}): {known}")


def _sources(p: Parsed) -> set[str]:
    return {e.source for e in p.entries}
