"""mmaction2 lists: `path label [label ...]` (VideoDataset), `frame_dir total_frames label` (RawframeDataset).

Labels are the trailing integer tokens (or known class names); the path is the rest of the line, so a path
may contain spaces. A line is a rawframe line when its path is a folder of images under the data root;
a folder of video files is mmaction2's RawVideoDataset (`video_dir label num_clips positive_clip ...`,
one random clip of the folder per visit), which has no one-clip-per-row meaning and is refused. A list is
multi-label only when the user says so (`--multi-label`, mmaction2's `multi_class`): a single-label line
with two labels is an error. A clip listed twice with the same labels is kept once (with a warning);
with different labels it is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import INDEX, VIDEO_SUFFIXES, Entry, Parsed, err, infer_split, read_text, safe_relpath
from .folder import is_frame_folder


def read(path: Path, *, root: Path, split: str | None, multi_label: bool, classes=None) -> Parsed:
    """Read an mmaction2 video or rawframe list."""
    split = split or infer_split(path.name)
    known = set(classes or ())
    out = Parsed([], multi_label=multi_label, indices=True)
    first: dict[str, tuple[int, tuple[str, ...]]] = {}
    for i, raw in enumerate(read_text(path).split("\n"), 1):
        tokens = raw.split()
        if not tokens:
            continue
        k = len(tokens)
        while k > 1 and (INDEX.fullmatch(tokens[k - 1]) or tokens[k - 1] in known):
            k -= 1
        if k == len(tokens):
            last = tokens[-1]
            why = (f": {last!r} is not a class index (0 to 999999999) nor a --classes name" if k > 1 and
                   re.fullmatch(r"[-+]?[0-9.eE+-]*[0-9][0-9.eE+-]*", last) else "")  # fmt: skip
            raise err(path, i, f"no label after {raw.strip()!r}{why} (expected 'path label [label ...]')")
        rel = safe_relpath(" ".join(tokens[:k]) if k > 1 else tokens[0], path, i)
        labels = tokens[k:]
        is_dir = (root / rel).is_dir()
        video = _first_video(root / rel) if is_dir else None
        if video:
            raise err(path, i, f"{rel!r} is a folder of videos, an mmaction2 RawVideoDataset line (a random "
                      "clip of it per visit): not supported; list each clip on its own line, e.g. "
                      f"'{rel}/{video} {labels[0]}'")  # fmt: skip
        if is_dir and len(labels) >= 2 and INDEX.fullmatch(labels[0]):
            labels = labels[1:]  # rawframes: 'frame_dir total_frames label'; frames are counted on disk
            if len(labels) == 2 and not multi_label and INDEX.fullmatch(labels[0]):
                raise err(path, i, "'frame_dir offset total_frames label' (mmaction2 with_offset) is not "
                          "supported; cut the frames into their own folder, or pass --multi-label if "
                          "the line is 'frame_dir total_frames label label'")  # fmt: skip
        if len(labels) > 1 and not multi_label:
            raise err(path, i, f"{len(labels)} labels ({' '.join(labels)}) in a single-label list; "
                      "pass --multi-label if clips may carry several labels")  # fmt: skip
        if len(set(labels)) != len(labels):
            raise err(path, i, f"label repeated in {' '.join(labels)!r}")
        if rel in first:
            line0, labels0 = first[rel]
            if sorted(labels0) != sorted(labels):
                raise err(path, i, f"{rel!r} is listed again with other labels ({' '.join(labels)} here, "
                          f"{' '.join(labels0)} on line {line0})")  # fmt: skip
            out.warnings.append(f"{path}:{i}: {rel!r} repeats line {line0} with the same labels; kept once")
            continue
        first[rel] = (i, tuple(labels))
        out.entries.append(Entry(rel, tuple(labels), split, rel, str(path), i))
    return out


def _first_video(d: Path) -> str | None:
    """The first video file's name in a folder of videos without frame images (RawVideoDataset's
    `part_0.mp4` ...), else None."""
    videos = sorted(f.name for f in d.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file())
    return videos[0] if videos and not is_frame_folder(d) else None
