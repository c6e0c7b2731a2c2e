"""Reading videos with PyAV: open, count, decode frames (or segments), and `load_clip`, the whole clip path.

Decoding is sequential and stops after the last needed frame; a segment (`start`/`end` seconds) is
reached by a seek. A frame folder reads as a video of its images. Unusable files raise `MissingVideo`,
`CorruptVideo`, `NoVideoStream` or `EmptyVideo`, each naming the file; a stream shorter than its header
(`ShortStream`) or broken part-way (`BrokenStream`) is sampled from the frames it has, as a partial clip.
`load_clip` = count -> sampling.frame_indices -> decode -> preprocess (frames may change size mid-stream).
Usage: `load_clip(path, Sampling(), Preprocess())` -> float32 [V, 3, T, S, S].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..annotations.common import FRAME_SUFFIXES
from ..errors import CorruptVideo, EmptyVideo, MissingVideo, NoVideoStream
from .preprocess import Preprocess, arrange_views, box_pixels, crop_views
from .sampling import Sampling, frame_indices

PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"[playlist]")  # text files FFmpeg would open as playlists


def _open(path: str | Path):
    """Open a container and its first video stream, turning every failure into a typed error."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MissingVideo(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise CorruptVideo(f"{path}: empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(PLAYLIST_MAGIC):  # FFmpeg would follow its entries anywhere: never a clip
        raise CorruptVideo(f"{path}: a playlist (HLS/ffconcat), not a video; refused")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise CorruptVideo(f"{path}: cannot open as a video container ({e})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise NoVideoStream(f"{path}: no video stream (has: {', '.join(kinds)})")
    return container, container.streams.video[0]


def count_frames(path: str | Path) -> int:
    """Number of frames of the first video stream (header count; counted by demuxing if absent)."""
    import av

    container, stream = _open(path)
    with container:
        n = stream.frames
        if n <= 0:
            try:
                n = sum(1 for p in container.demux(stream) if p.size)
            except av.FFmpegError as e:
                raise CorruptVideo(f"{path}: cannot read packets ({e})") from None
    if n <= 0:
        raise EmptyVideo(f"{path}: the video stream has no frames")
    return n


class ShortStream(CorruptVideo):
    """The stream decodes to fewer frames than its header claims; `.decoded` says how many it gave."""

    def __init__(self, message: str, decoded: int):
        super().__init__(message)
        self.decoded = decoded


class BrokenStream(CorruptVideo):
    """Decoding failed after `.decoded` good frames (a damaged or cut file)."""

    def __init__(self, message: str, decoded: int):
        super().__init__(message)
        self.decoded = decoded


def iter_frames(
    path: str | Path, indices, start: float | None = None, end: float | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, uint8 RGB [H, W, 3]) for each distinct index, in order, decoding the stream once.

    Decoding stops after the largest index; only needed frames are converted to RGB. With `start`/`end`
    (seconds) index 0 is the first frame of the segment and decoding seeks to it. A frame folder yields
    its images. A stream that ends before the largest index raises ShortStream, one that fails after good
    frames BrokenStream (both CorruptVideo, with `.decoded`), one with no frames EmptyVideo.
    """
    import av

    needed = set(np.asarray(indices, dtype=np.int64).reshape(-1).tolist())
    if not needed:
        raise ValueError("iter_frames needs at least one frame index")
    if min(needed) < 0:
        raise ValueError(f"negative frame index {min(needed)}")
    last = max(needed)
    if Path(path).is_dir():
        files = frame_files(path)
        for i in sorted(k for k in needed if k < len(files)):
            yield i, _read_image(files[i])
        if last >= len(files):
            raise ShortStream(f"{path}: {len(files)} frames; frame {last} was requested", len(files))
        return
    container, stream = _open(path)
    i = -1
    with container:
        try:
            for i, frame in enumerate(_decode(container, stream, start, end)):
                if i in needed:
                    yield i, frame.to_rgb().to_ndarray()  # as mmaction2 PyAVDecode
                if i >= last:
                    return
        except av.FFmpegError as e:
            msg = f"{path}: decoding failed after {i + 1} frames ({e})"
            raise (BrokenStream(msg, i + 1) if i >= 0 else CorruptVideo(msg)) from None
    if i < 0:
        where = f" in the segment [{start}, {end}] s" if start is not None or end is not None else ""
        raise EmptyVideo(f"{path}: the video stream decodes to zero frames{where}")
    msg = f"{path}: stream ended after {i + 1} frames; frame {last} was requested (truncated?)"
    raise ShortStream(msg, i + 1)


def _decode(container, stream, start: float | None, end: float | None):
    """Decoded frames of [start, end) seconds from the stream's first timestamp; seeks to `start`."""
    if start is None and end is None:
        yield from container.decode(stream)
        return
    tb, t0 = _seek(container, stream, start)
    for frame in container.decode(stream):
        t = (frame.pts if frame.pts is not None else 0) * tb - t0
        if start is not None and t < start - 1e-6:
            continue
        if end is not None and t >= end - 1e-6:
            return
        yield frame


def _seek(container, stream, start: float | None) -> tuple[float, float]:
    """Seek to the keyframe at or before `start` s (if given); return (time base, first timestamp) in s."""
    tb = float(stream.time_base)
    t0 = (stream.start_time or 0) * tb
    if start:
        container.seek(int((start + t0) / tb), stream=stream, backward=True, any_frame=False)
    return tb, t0


def segment_frames(path: str | Path, start: float | None, end: float | None) -> int:
    """Frames of a segment, counted from packet timestamps after a seek (no decoding)."""
    import av

    container, stream = _open(path)
    n = 0
    with container:
        try:
            tb, t0 = _seek(container, stream, start)
            for p in container.demux(stream):
                if p.pts is None or not p.size:
                    continue
                t = p.pts * tb - t0
                if (start is None or t >= start - 1e-6) and (end is None or t < end - 1e-6):
                    n += 1
                if end is not None and p.dts is not None and p.dts * tb - t0 >= end + 1:
                    break  # decode order is past the segment (1 s of slack for B-frame reordering)
        except av.FFmpegError as e:
            if not n:
                raise CorruptVideo(f"{path}: cannot read packets ({e})") from None
    if n <= 0:
        raise EmptyVideo(f"{path}: no frames in the segment [{start}, {end}] s")
    return n


def frame_files(folder: str | Path) -> list[Path]:
    """The image files of a frame folder, in name order (img_00001.jpg ... as mmaction2 writes them)."""
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file())
    if any(f.name.startswith("img_") for f in files):  # mmaction2's filename_tmpl; flow_x_... etc. beside
        files = [f for f in files if f.name.startswith("img_")]
    if not files:
        raise EmptyVideo(f"{folder}: frame folder without images ({', '.join(FRAME_SUFFIXES)})")
    return files


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise CorruptVideo(f"{path}: cannot read the image ({e})") from None


def decode_frames(path: str | Path, indices, start=None, end=None) -> np.ndarray:
    """Frames at `indices` (any order, repeats allowed), uint8 RGB [len(indices), H, W, 3]."""
    frames, inverse = _decode_unique(path, np.asarray(indices, dtype=np.int64).reshape(-1), start, end)
    return np.stack(frames)[inverse]


def load_clip(
    path: str | Path,
    sampling: Sampling,
    preprocess: Preprocess,
    rng=None,
    *,
    start: float | None = None,
    end: float | None = None,
    box=None,
    box_margin: float = 0.0,
    strict: bool = False,
    info: dict | None = None,
) -> torch.Tensor:
    """Decode, sample and preprocess one clip: float32 [V, 3, T, H, W], V = crops * num_clips, crop-major.

    `path` is a video file or a frame folder; `start`/`end` (seconds) cut a segment (decoded after a
    seek); `box` is cropped (grown by `box_margin`) before the resize/crop. Frames that exist are sampled
    when the header over-counts; a stream failing after good frames is sampled from those and recorded in
    `info` (decoded, declared, partial=True) unless `strict`. Frames of different sizes are resized each.
    """
    if Path(path).is_dir():
        total = len(frame_files(path))
    elif start is not None or end is not None:
        total = segment_frames(path, start, end)
    else:
        total = count_frames(path)
    state = rng.bit_generator.state if rng is not None else None  # a resample draws the same numbers
    inds = frame_indices(sampling, total, rng).reshape(-1)  # [num_clips*T]
    try:
        frames, inverse = _decode_unique(path, inds, start, end)
    except (ShortStream, BrokenStream) as e:
        broken = isinstance(e, BrokenStream)
        if broken and strict:
            raise
        if info is not None:
            info.update(decoded=e.decoded, declared=total, partial=broken)
        if state is not None:
            rng.bit_generator.state = state
        inds = frame_indices(sampling, e.decoded, rng).reshape(-1)
        frames, inverse = _decode_unique(path, inds, start, end)
    if box is not None:
        frames = [f[t:b, lf:r] for f in frames for t, lf, b, r in [box_pixels(box, *f.shape[:2], box_margin)]]
    views = _crop_views_each_size(frames, preprocess)  # [crops, U, 3, S, S]
    return arrange_views(views[:, torch.as_tensor(inverse.reshape(-1))], sampling.num_clips)


def _crop_views_each_size(frames: list[np.ndarray], p: Preprocess) -> torch.Tensor:
    """crop_views over frames that may differ in size (a stream whose resolution changes mid-way)."""
    out, k = [], 0
    while k < len(frames):
        j = k
        while j < len(frames) and frames[j].shape == frames[k].shape:
            j += 1
        out.append(crop_views(np.stack(frames[k:j]), p))  # [crops, j-k, 3, S, S]
        k = j
    return torch.cat(out, dim=1)


def _decode_unique(path, inds: np.ndarray, start=None, end=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode each distinct index once (short clips repeat frames): (frames U x [H, W, 3], inverse [M])."""
    uniq, inverse = np.unique(inds, return_inverse=True)
    got = dict(iter_frames(path, uniq, start, end))
    return [got[k] for k in uniq.tolist()], inverse
