"""Ingestion: check-data probe throughput, segment decoding cost, and the plain-clip load path.

1. `check-data` probes (open, header, packet count, first frame) vs decoding every frame, clips/s, in one
   process, on 16 H.264 clips of 8 s at 320x240; and check-data's 2-worker throughput.
2. The 16 sampled frames of a 2 s segment of a 10-minute H.264 video (320x240, 25 fps, x264's default GOP of
   250 frames): decoded after a seek, vs decoding from the start up to the segment, vs 16 frames spread
   over the whole video.
3. A plain clip (no segment, no box) through the new `load_clip` vs the former path (count, sample, decode,
   stack, preprocess), to show the robustness work costs nothing per clip.
All interleaved A/B, medians. Run: `python -m bench ingest`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.common import interleave, machine_line, median, write_section

FPS, MINUTES, SEGMENT, N_PROBE = 25, 10, (300.0, 302.0), 16


def long_video(path: Path, seconds: float = 60 * MINUTES, size=(120, 160)) -> Path:
    """An H.264 file whose frames change every frame (grey ramp + moving bar)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        base = np.zeros((*size, 3), np.uint8)
        for i in range(int(FPS * seconds)):
            f = base.copy()
            f[:] = i % 200
            f[:, (i * 3) % 150 : (i * 3) % 150 + 10] = 255
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def _decode_all(path: str) -> int:
    import av

    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def main(rounds: int = 5) -> None:
    import torch

    from stecache.annotations import load_dataset
    from stecache.checkdata import check_data
    from stecache.video import (
        Preprocess,
        Sampling,
        count_frames,
        decode_frames,
        frame_indices,
        load_clip,
        preprocess_frames,
        segment_frames,
    )

    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "clips").mkdir()
        for i in range(N_PROBE):  # 8 s 320x240 clips: what a user's dataset holds
            long_video(tmp / "clips" / f"c{i:02d}.mp4", seconds=8, size=(240, 320))
        lst = tmp / "train.txt"
        lst.write_text("".join(f"clips/c{i:02d}.mp4 {i % 2}\n" for i in range(N_PROBE)))
        ds = load_dataset([("train", lst)], tmp)
        paths = [str(ds.root / c.path) for c in ds.clips]
        video = long_video(tmp / "long.mp4", size=(240, 320))
        sampling, pre = Sampling("uniform", clip_len=16), Preprocess(112, 112)

        def decode_every_frame():  # in this process, like the probe below: the work per clip, no pool
            return sum(_decode_all(p) for p in paths)

        seg_idx = frame_indices(sampling, segment_frames(video, *SEGMENT)).reshape(-1)  # 16 of the 50
        whole_idx = frame_indices(sampling, count_frames(video)).reshape(-1)  # 16 of the 15000
        first = int(SEGMENT[0] * FPS)

        def old_load(path):  # the former load_clip: count, sample, decode, stack, preprocess
            total = count_frames(path)
            inds = frame_indices(sampling, total).reshape(-1)
            uniq, inverse = np.unique(inds, return_inverse=True)
            x = preprocess_frames(decode_frames(path, uniq), 1, pre)
            return x[:, :, torch.as_tensor(inverse)]

        plain = [str(p) for p in sorted((tmp / "clips").iterdir())][:8]
        t = interleave(
            {
                "probe": lambda: check_data(ds, workers=0),
                "probe 2 workers": lambda: check_data(ds, workers=2),
                "decode all": decode_every_frame,
                "segment seek": lambda: decode_frames(video, seg_idx, *SEGMENT),
                "segment from 0": lambda: decode_frames(video, seg_idx + first),  # decode 0 .. the segment
                "whole video": lambda: decode_frames(video, whole_idx),
                "load new": lambda: [load_clip(p, sampling, pre) for p in plain],
                "load old": lambda: [old_load(p) for p in plain],
            },
            rounds=rounds,
        )
        for p in plain[:4]:  # same tensors: the new path changes no value
            torch.testing.assert_close(load_clip(p, sampling, pre), old_load(p), rtol=0, atol=0)
        np.testing.assert_array_equal(
            decode_frames(video, seg_idx, *SEGMENT), decode_frames(video, seg_idx + first)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    canary = median(t.pop("_canary_gflops"))
    m = {k: median(v) for k, v in t.items()}
    n = len(paths)
    seg = SEGMENT[1] - SEGMENT[0]
    rows = [
        ("check-data, 2 worker processes", "probe 2 workers", f"{n / m['probe 2 workers']:,.0f} clips/s", ""),
        (
            "check-data probe, 1 process",
            "probe",
            f"{n / m['probe']:,.0f} clips/s",
            f"{m['decode all'] / m['probe']:.1f}× faster",
        ),
        ("decode every frame, 1 process", "decode all", f"{n / m['decode all']:,.0f} clips/s", "1"),
        (
            f"{seg:.0f} s segment, seek",
            "segment seek",
            "",
            f"{m['whole video'] / m['segment seek']:.0f}× cheaper",
        ),
        (
            f"{seg:.0f} s segment, decode from 0",
            "segment from 0",
            "",
            f"{m['segment from 0'] / m['segment seek']:.0f}×",
        ),
        ("whole video, 16 frames", "whole video", "", "1"),
        (
            "plain clips, new load_clip",
            "load new",
            f"{len(plain) / m['load new']:,.1f} clips/s",
            f"{m['load new'] / m['load old']:.3f}× time",
        ),
        ("plain clips, former path", "load old", f"{len(plain) / m['load old']:,.1f} clips/s", "1"),
    ]
    table = "\n".join(f"| {a} | {m[k]:.3f} | {r} | {x} |" for a, k, r, x in rows)
    body = (
        f"Probe vs decode: {n} H.264 clips of 8 s at 320x240, both in one process (the work per clip); "
        f"check-data's own 2-worker run for scale. Segment: decoding the 16 "
        f"sampled frames of {seg:.0f} s at {SEGMENT[0]:.0f} s of a {MINUTES}-minute 320x240 H.264 video "
        f"({FPS * 60 * MINUTES} frames, GOP 250) vs 16 frames spread over the whole video. Plain clips: "
        f"{len(plain)} of the 8 s clips through `load_clip` (112² crops). "
        f"Medians of {rounds} interleaved rounds; {machine_line()}, canary {canary:.1f} GFLOP/s.\n\n"
        "| measurement | median s | rate | ratio |\n|---|---:|---:|---:|\n" + table + "\n\n"
        "The segment's cost follows the segment (a seek lands on the keyframe before it, then at most "
        "one GOP is decoded), not the video's length; plain clips give identical tensors at the same speed."
    )
    write_section("Ingestion: check-data probe, segment seek, plain-clip load (bench_ingest.py)", body)


if __name__ == "__main__":
    main()
