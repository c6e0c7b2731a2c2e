"""Where a clip may be read from: a local regular file or frame folder whose real path lies in its root.

Symlinks are resolved before the check, so a link inside the root pointing outside is refused, and the
caller opens the resolved absolute path (never a string an FFmpeg protocol prefix could hijack).
Playlists (HLS `.m3u8`/`.m3u`, ffconcat lists) are refused outright: their entries could name any file
or URL, and a file that is a playlist under a video suffix is caught by `video/decode.py` sniffing its header.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import PathOutsideRoot

PLAYLIST_SUFFIXES = (".m3u8", ".m3u", ".ffconcat", ".pls", ".sdp")


def resolve_clip(root: str | Path, rel: str) -> Path:
    """The real path of `root/rel`; PathOutsideRoot if it leaves the root or is no plain file/folder."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathOutsideRoot(f"{rel}: resolves to {real}, outside the data root {real_root}; refused")
    if Path(rel).suffix.lower() in PLAYLIST_SUFFIXES or Path(real).suffix.lower() in PLAYLIST_SUFFIXES:
        raise PathOutsideRoot(f"{rel}: playlists (HLS .m3u8, ffconcat) are not clips; give the media files")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return Path(real)  # missing: the decoder reports MissingVideo
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise PathOutsideRoot(f"{rel}: not a regular file or folder (a device, FIFO or socket); refused")
    return Path(real)
