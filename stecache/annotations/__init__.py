"""Annotation readers, one small module per format, and the one-class-list dataset they build.

`READERS` is the table format name -> reader; each reader turns one file into `Entry` records carrying
label names, and `dataset.build_dataset` resolves them against one class list shared by all splits
(`Clip.labels` are indices into `Dataset.classes`). Formats are detected from the file where it can be
(`guess_format`) and can always be named. Malformed input raises `AnnotationError` naming file and line;
nothing is skipped silently. The formats, with examples, are described in data/README.md.
Python: `load_dataset([("train", "lists/train.txt"), ("val", "lists/val.txt")], data_root="videos")`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import AnnotationError
from . import csvfile, folder, hmdb51, mmaction, ssv2, tinyvirat, ucf101
from .common import VIDEO_SUFFIXES, Clip, Entry, Parsed, infer_split, read_classes, read_text, safe_relpath
from .dataset import Dataset, build_dataset
from .holdout import val_from_train
from .paths import resolve_clip

__all__ = ["Clip", "Dataset", "Entry", "Parsed", "READERS", "FORMATS", "VIDEO_SUFFIXES", "build_dataset"]
__all__ += ["guess_format", "infer_split", "load_dataset", "load_dataset_dir", "read_annotations"]
__all__ += ["read_classes", "read_text", "resolve_clip", "safe_relpath", "val_from_train"]

READERS = {
    "mmaction": mmaction.read,  # video or rawframe list: path label [label ...]
    "tinyvirat": tinyvirat.read,  # TinyVIRAT-v2 JSON (+ class_map.json)
    "csv": csvfile.read,  # path,label[,split][,start,end][,x1,y1,x2,y2]; Kinetics CSV
    "folder": folder.read,  # <folder>/<class>/<clip>
    "ucf101": ucf101.read,  # classInd.txt + trainlist0N.txt / testlist0N.txt
    "hmdb51": hmdb51.read,  # <class>_test_splitN.txt files
    "ssv2": ssv2.read,  # labels.json + train.json / validation.json
}
FORMATS = tuple(READERS)


def guess_format(path: Path) -> str:
    """The format a file (or folder) is in, from its name and, for JSON, its first record."""
    name = path.name.lower()
    if path.is_dir():
        return "hmdb51" if any(hmdb51.NAME.fullmatch(f.name) for f in path.iterdir()) else "folder"
    if hmdb51.NAME.fullmatch(path.name):
        return "hmdb51"
    if ucf101.NAME.fullmatch(name) and (path.parent / "classInd.txt").is_file():
        return "ucf101"
    suffix = {".txt": "mmaction", ".lst": "mmaction", ".list": "mmaction", ".csv": "csv"}
    if path.suffix.lower() in suffix:
        return suffix[path.suffix.lower()]
    if path.suffix.lower() == ".json":
        head = read_text(path)[:4096]
        if (path.parent / "labels.json").is_file() and re.search(r'"template"\s*:|^\s*\[\s*\{\s*"id"', head):
            return "ssv2"
        return "tinyvirat"
    raise AnnotationError(f"{path}: cannot tell the format from the name; name one of {', '.join(FORMATS)}")


def _parse(path, fmt, root: Path, split, multi_label, classes) -> Parsed:
    path = Path(path)
    fmt = fmt or guess_format(path)
    if fmt not in READERS:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r}; one of {', '.join(FORMATS)}")
    return READERS[fmt](path, root=root, split=split, multi_label=multi_label, classes=classes)


def load_dataset(
    annotations: Sequence[tuple[str | None, str | Path]] | dict,
    data_root: str | Path | dict,
    *,
    classes: Sequence[str] | str | Path | None = None,
    multi_label: bool = False,
    fmt: str | None = None,
) -> Dataset:
    """A Dataset from annotation files, each `(split or None, path)`; one class list over all of them.

    `data_root` is one folder, or {split: folder} with key None as the default (per-split roots).
    `classes` is a list, or a classes.txt / class_map.json file. `multi_label` declares a list format
    multi-label (mmaction2's multi_class); TinyVIRAT and CSVs with ';' labels are multi-label anyway.
    """
    items = list(annotations.items()) if isinstance(annotations, dict) else list(annotations)
    roots = dict(data_root) if isinstance(data_root, dict) else {None: data_root}
    roots = {k: Path(v) for k, v in roots.items()}
    default = roots.get(None) or next(iter(roots.values()))
    source = "--classes"
    if isinstance(classes, (str, Path)):
        source, classes = str(classes), read_classes(classes)
    parsed = []
    for split, path in items:
        root = roots.get(split, default)
        p = _parse(path, fmt, root, split, multi_label, classes)
        lacking = sorted({e.split for e in p.entries} - set(roots)) if None not in roots else []
        if lacking:  # only per-split roots given: another split's root would be used silently
            given, name = ", ".join(map(str, roots)), lacking[0]
            raise AnnotationError(
                f"{path}: no --data-root for split {name!r} (given for {given}); add --data-root DIR or "
                f"{name}=DIR"
            )
        p.entries = [
            dataclasses.replace(e, root=str(roots[e.split])) if roots.get(e.split, default) != default else e
            for e in p.entries
        ]
        parsed.append(p)
    return build_dataset(parsed, default, classes, multi_label, source)


def read_annotations(
    path: str | Path,
    fmt: str | None = None,
    *,
    data_root: str | Path,
    classes: Sequence[str] | str | Path | None = None,
    split: str | None = None,
    multi_label: bool = False,
) -> list[Clip]:
    """The clips of one annotation file (or class folder), labelled against its own class list."""
    return list(
        load_dataset([(split, path)], data_root, classes=classes, multi_label=multi_label, fmt=fmt).clips
    )


def load_dataset_dir(root: str | Path) -> Dataset:
    """The folder `stecache synth` writes: classes.txt, train/val/test.txt lists, optional dataset.json."""
    root = Path(root)
    if not (root / "classes.txt").is_file():
        raise AnnotationError(f"{root}: no classes.txt (expected the layout `stecache synth` writes)")
    meta: dict = {}
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text())
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{root / 'dataset.json'}:{e.lineno}: invalid JSON ({e.msg})") from None
    splits = meta.get("splits") or {s: f"{s}.txt" for s in ("train", "val", "test")}
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        raise AnnotationError(f"{root / 'dataset.json'}: 'splits' must map split names to list files")
    items = [(name, root / f) for name, f in splits.items() if (root / f).is_file() or meta]
    if not items:
        raise AnnotationError(f"{root}: no train.txt / val.txt / test.txt lists")
    multi = bool(meta.get("multi_label", False))
    return load_dataset(items, root, classes=root / "classes.txt", multi_label=multi, fmt="mmaction")
