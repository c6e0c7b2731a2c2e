"""Tests for stecache.video: mmaction2 sampling rules, decoding, resize/crop/normalise, typed video errors."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from stecache.errors import CorruptVideo, EmptyVideo, MissingVideo, NoVideoStream, VideoError
from stecache.synth import event_box, write_mp4
from stecache.video import (
    Preprocess,
    Sampling,
    count_frames,
    crop_offsets,
    crop_views,
    decode_frames,
    frame_indices,
    load_clip,
    preprocess_frames,
    resized_size,
    sample_frames,
    uniform_sample,
)

# ---- sampling: values computed by hand from mmaction2's SampleFrames / UniformSample -------------------


@pytest.mark.parametrize(
    "total,clip_len,interval,num_clips,test_mode,expected",
    [
        # test mode, one clip: ori_len = 15*4+1 = 61, max_offset = 39, centred offset 39 // 2 = 19
        (100, 16, 4, 1, True, [list(range(19, 80, 4))]),
        # shorter than the window: offset 0, indices wrap modulo 30 ('loop')
        (30, 16, 4, 1, True, [[0, 4, 8, 12, 16, 20, 24, 28, 2, 6, 10, 14, 18, 22, 26, 0]]),
        # 5 test clips: offsets round(k * 39 / 4) = 0, 9.75->10, 19.5->20 (half to even), 29.25->29, 39
        (100, 16, 4, 5, True, [[o + 4 * i for i in range(16)] for o in (0, 10, 20, 29, 39)]),
        # ori_len 4, max_offset 1 -> offset 1 // 2 = 0
        (5, 4, 1, 1, True, [[0, 1, 2, 3]]),
        # 3 frames, window 7: 0, 2, 4 % 3, 6 % 3
        (3, 4, 2, 1, True, [[0, 2, 1, 0]]),
        # clip_len 1 (2D branch): segment 10/3, middles 1.67, 5, 8.33 truncated
        (10, 1, 3, 3, True, [[1], [5], [8]]),
        # train, avg_interval = (32 - 32 + 1) // 3 = 0 -> offsets around(k / 3) = 0, 0, 1 (deterministic)
        (32, 8, 4, 3, False, [list(range(0, 32, 4))] * 2 + [list(range(1, 33, 4))]),
        # train, avg_interval = (33 - 32 + 1) // 2 = 1 -> offsets k*1 + randint(1) = 0, 1
        (33, 8, 4, 2, False, [list(range(0, 32, 4)), list(range(1, 33, 4))]),
        # train, clip longer than the video and avg_interval < 0 -> zero offsets, wrap modulo 20
        (20, 8, 4, 2, False, [[0, 4, 8, 12, 16, 0, 4, 8]] * 2),
        # offsets round(k * 5 / 2) = 0, 2.5 -> 2 (numpy rounds half to even), 5
        (7, 2, 1, 3, True, [[0, 1], [2, 3], [5, 6]]),
        # train, avg_interval (32 - 32 + 1) // 2 = 0 and total == window: around([0, 0.5]) = 0, 0
        (32, 8, 4, 2, False, [list(range(0, 32, 4))] * 2),
        # one frame only
        (1, 4, 4, 2, True, [[0, 0, 0, 0]] * 2),
    ],
)
def test_sample_frames_hand_values(total, clip_len, interval, num_clips, test_mode, expected):
    got = sample_frames(total, clip_len, interval, num_clips, test_mode, rng=np.random.default_rng(0))
    assert got.dtype == np.int64 and got.shape == (num_clips, clip_len)
    assert got.tolist() == expected


def test_sample_frames_train_random_offsets_cover_their_range():
    rng = np.random.default_rng(0)
    # avg_interval = 100 - 64 + 1 = 37: offset uniform in [0, 36], then +4 per frame
    offsets = {int(sample_frames(100, 16, 4, 1, False, rng)[0, 0]) for _ in range(2000)}
    assert offsets == set(range(37))
    # 2 clips over 50 frames: avg_interval (50 - 32 + 1) // 2 = 9 -> clip k starts in [9k, 9k + 8]
    starts = np.array([sample_frames(50, 8, 4, 2, False, rng)[:, 0] for _ in range(2000)])
    assert set(starts[:, 0]) == set(range(9)) and set(starts[:, 1]) == set(range(9, 18))
    # avg_interval 0 but total > window: sorted random offsets in [0, total - 32]
    starts = np.array([sample_frames(33, 8, 4, 3, False, rng)[:, 0] for _ in range(500)])
    assert set(starts.ravel()) == {0, 1} and (np.diff(starts, axis=1) >= 0).all()


def test_sample_frames_train_is_reproducible_from_rng():
    a = sample_frames(200, 8, 2, 3, False, np.random.default_rng(5))
    b = sample_frames(200, 8, 2, 3, False, np.random.default_rng(5))
    assert (a == b).all()


@pytest.mark.parametrize(
    "total,clip_len,num_clips,expected",
    [
        # seg = 16/8 = 2, duration = 2/2 = 1: 2i + 1
        (17, 8, 1, [list(range(1, 17, 2))]),
        # seg = 9/8 = 1.125: round(1.125 i) = 0 1 2 3 4(4.5 half-even) 6 7 8; int(0.5625) = 0
        (10, 8, 1, [[0, 1, 2, 3, 4, 6, 7, 8]]),
        # shorter than clip_len: frames repeat instead of looping
        (4, 8, 1, [[0, 0, 1, 1, 2, 2, 2, 3]]),
        # seg = 12.375, 4 clips: shifts int(2.475 (k+1)) = 2, 4, 7, 9; starts 0 12 25 37 50 62 74 87
        (100, 8, 4, [[s + d for s in (0, 12, 25, 37, 50, 62, 74, 87)] for d in (2, 4, 7, 9)]),
        (1, 3, 2, [[0, 0, 0], [0, 0, 0]]),
    ],
)
def test_uniform_sample_hand_values(total, clip_len, num_clips, expected):
    got = uniform_sample(total, clip_len, num_clips, True)
    assert got.dtype == np.int64 and got.tolist() == expected


def test_uniform_sample_train_draws_within_segments():
    rng = np.random.default_rng(0)
    draws = np.array([uniform_sample(17, 8, 1, False, rng)[0] for _ in range(1000)])
    # seg = 2: frame i is uniform in [2i, 2i + 2]
    for i in range(8):
        assert set(draws[:, i]) == {2 * i, 2 * i + 1, 2 * i + 2}


def test_frame_indices_always_in_range():
    rng = np.random.default_rng(0)
    for total in [1, 2, 3, 7, 16, 31, 64, 65, 200]:
        for s in [
            Sampling("dense", 16, 4, 1, True),
            Sampling("dense", 8, 2, 5, False),
            Sampling("dense", 1, 1, 3, True),
            Sampling("uniform", 8, 1, 4, True),
            Sampling("uniform", 16, 1, 1, False),
        ]:
            inds = frame_indices(s, total, rng)
            assert inds.shape == (s.num_clips, s.clip_len)
            assert inds.min() >= 0 and inds.max() < total


def test_sampling_config_validates():
    with pytest.raises(ValueError, match="rule"):
        Sampling(rule="random")
    with pytest.raises(ValueError, match="clip_len"):
        Sampling(clip_len=0)
    assert Sampling.from_dict(Sampling(rule="uniform").to_dict()) == Sampling(rule="uniform")


# ---- decoding --------------------------------------------------------------------------------------------


def moving_square_clip(T=12, H=32, W=48):
    """Dark frames with a white 8x8 square whose left edge is at x = 3t in frame t."""
    frames = np.full((T, H, W, 3), 30, np.uint8)
    for t in range(T):
        frames[t, 12:20, 3 * t : 3 * t + 8] = 230
    return frames


@pytest.fixture(scope="module")
def square_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    write_mp4(path, moving_square_clip())
    return path


def test_decode_returns_count_size_and_content(square_mp4):
    assert count_frames(square_mp4) == 12
    frames = decode_frames(square_mp4, range(12))
    assert frames.dtype == np.uint8 and frames.shape == (12, 32, 48, 3)
    for t in range(12):
        column = frames[t, 12:20].mean(axis=(0, 2))  # brightness per x
        assert abs(int(np.argmax(column >= 128)) - 3 * t) <= 1  # the square's left edge is at 3t
        assert frames[t, 12:20, 3 * t + 1 : 3 * t + 7].mean() > 200
        assert frames[t, :8].mean() < 50  # rows above the square stay dark


def test_count_frames_without_header_count_demuxes(tmp_path):
    """Matroska stores no frame count: count_frames counts packets instead."""
    path = tmp_path / "clip.mkv"
    frames = moving_square_clip(T=7)
    with av.open(str(path), "w", format="matroska") as c:
        stream = c.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for f in frames:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(stream.encode())
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # the case under test
    assert count_frames(path) == 7
    assert decode_frames(path, [6]).shape == (1, 32, 48, 3)


def test_decode_any_order_and_repeats(square_mp4):
    everything = decode_frames(square_mp4, range(12))
    picked = decode_frames(square_mp4, [7, 0, 7, 3])
    assert np.array_equal(picked, everything[[7, 0, 7, 3]])


def test_decode_past_the_end_is_corrupt_video(square_mp4):
    with pytest.raises(CorruptVideo, match="square.mp4.*frame 12"):
        decode_frames(square_mp4, [12])


def test_decoded_synth_clip_matches_the_generator(synth_dir):
    """A moving object in a synthetic clip is where the generator put it, frame by frame."""
    records = [json.loads(line) for line in (synth_dir / "clips.jsonl").read_text().splitlines()]
    rec = next(r for r in records if [e["class"] for e in r["events"]] == ["left_to_right"])
    T = rec["frames"]
    frames = decode_frames(synth_dir / rec["path"], range(T))
    assert frames.shape == (T, rec["height"], rec["width"], 3)
    ev = rec["events"][0]
    xs = []
    for t in range(T):
        box = event_box(ev, t, T)
        if box is None:
            continue
        y, x, s = box
        inner = frames[t, y + 1 : y + s - 1, x + 1 : x + s - 1].reshape(-1, 3).mean(0)
        assert np.abs(inner - ev["color"]).max() < 40, (t, inner, ev["color"])
        xs.append(x)
    assert xs[-1] > xs[0]  # it moved left to right


# ---- preprocessing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h,w,short,expected",
    [
        (240, 320, 224, (224, 299)),  # 320 * 224/240 = 298.67 -> 299
        (10, 10, 32, (32, 32)),
        (100, 50, 224, (448, 224)),
        (15, 20, 8, (8, 11)),  # 20 * 8/15 = 10.67 -> 11
        (7, 9, 14, (14, 18)),
    ],
)
def test_resized_size_is_mmcv_rescale(h, w, short, expected):
    assert resized_size(h, w, short) == expected


def test_crop_offsets_are_mmaction2s():
    assert crop_offsets(224, 299, 224, "center") == [(0, 37)]
    assert crop_offsets(224, 299, 224, "three") == [(0, 0), (0, 74), (0, 37)]  # left, right, middle
    assert crop_offsets(300, 224, 224, "three") == [(0, 0), (76, 0), (38, 0)]  # top, bottom, middle
    assert crop_offsets(224, 224, 224, "three") == [(0, 0)] * 3
    assert crop_offsets(11, 13, 8, "center") == [(1, 2)]


def bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent half-pixel bilinear resize (cv2.INTER_LINEAR rule), float64, img [H, W, C]."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(img.shape[0], out_h)
    x0, x1, fx = axis(img.shape[1], out_w)
    img = img.astype(np.float64)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize("h,w,short,crop", [(10, 10, 32, 32), (40, 60, 24, 24), (30, 18, 20, 16)])
def test_preprocess_matches_independent_reference(h, w, short, crop):
    rng = np.random.default_rng(h * w)
    frames = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    p = Preprocess(
        short_side=short, crop_size=crop, crop="center", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0)
    )
    out = preprocess_frames(frames, 1, p)
    assert out.shape == (1, 3, 3, crop, crop) and out.dtype == torch.float32
    nh, nw = resized_size(h, w, short)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    for t in range(3):
        ref = bilinear_reference(frames[t], nh, nw)[top : top + crop, left : left + crop]
        ref = (ref - np.array([10.0, 20.0, 30.0])) / np.array([2.0, 4.0, 5.0])  # [S, S, 3]
        np.testing.assert_allclose(out[0, :, t].permute(1, 2, 0).numpy(), ref, atol=1e-3)


def test_preprocess_resize_mode_squashes():
    frames = np.random.default_rng(0).integers(0, 256, (2, 20, 36, 3), dtype=np.uint8)
    p = Preprocess(short_side=16, crop_size=16, crop="resize", mean=(0, 0, 0), std=(1, 1, 1))
    out = preprocess_frames(frames, 1, p)
    assert out.shape == (1, 3, 2, 16, 16)
    np.testing.assert_allclose(
        out[0, :, 1].permute(1, 2, 0).numpy(), bilinear_reference(frames[1], 16, 16), atol=1e-3
    )


def test_three_crop_views_are_crop_major():
    """V = crop * num_clips + clip; crops left/right/middle; frame value encodes (clip, t) and x."""
    num_clips, T, H, W = 2, 3, 8, 14
    frames = np.zeros((num_clips * T, H, W, 3), np.uint8)
    for m in range(num_clips * T):
        frames[m, :, :, 0] = m  # red channel: which frame (clip * T + t)
        frames[m, :, :, 1] = np.arange(W)[None, :]  # green channel: x coordinate
    p = Preprocess(short_side=8, crop_size=8, crop="three", mean=(0, 0, 0), std=(1, 1, 1))
    out = preprocess_frames(frames, num_clips, p)
    assert out.shape == (6, 3, T, 8, 8)
    step = (W - 8) // 2
    for crop, left in enumerate([0, 2 * step, step]):
        for clip in range(num_clips):
            v = out[crop * num_clips + clip]
            assert v[0, :, 0, 0].tolist() == [clip * T + t for t in range(T)]
            assert v[1, 0, 0, :].tolist() == list(range(left, left + 8))


def test_preprocess_config_validates():
    with pytest.raises(ValueError, match="crop"):
        Preprocess(crop="ten")
    with pytest.raises(ValueError, match="crop_size"):
        Preprocess(short_side=100, crop_size=112)


def test_load_clip_tiny_10px_video_upscales(tmp_path):
    """A 10x10 clip (TinyVIRAT's smallest) upscales to the crop with its content in place."""
    frames = np.full((9, 10, 10, 3), 20, np.uint8)
    frames[:, 0:4, 6:10] = 230  # bright top-right corner
    path = tmp_path / "tiny.mp4"
    write_mp4(path, frames)
    p = Preprocess(short_side=40, crop_size=40, crop="center", mean=(0, 0, 0), std=(1, 1, 1))
    x = load_clip(path, Sampling("uniform", clip_len=4, num_clips=1), p)
    assert x.shape == (1, 3, 4, 40, 40) and x.dtype == torch.float32
    assert x[0, :, :, 2:14, 26:38].mean() > 180  # top-right corner, away from the blurred edge
    assert x[0, :, :, 26:38, 2:14].mean() < 60  # bottom-left stays dark


def test_load_clip_views_and_normalisation(square_mp4):
    s = Sampling("dense", clip_len=4, frame_interval=2, num_clips=2, test_mode=True)
    p = Preprocess(short_side=32, crop_size=32, crop="three")
    x = load_clip(square_mp4, s, p)
    assert x.shape == (6, 3, 4, 32, 32)
    # mean/std in 0-255 units: the dark background (~30) maps near (30 - mean) / std
    expected = (30 - torch.tensor(p.mean)) / torch.tensor(p.std)
    np.testing.assert_allclose(x[0, :, 0, 0:4, 0:4].mean((1, 2)).numpy(), expected.numpy(), atol=0.1)
    # offsets of the 2 test clips over 12 frames: max_offset 12 - 7 = 5 -> 0 and 5; the views agree
    manual = preprocess_frames(decode_frames(square_mp4, [0, 2, 4, 6, 5, 7, 9, 11]), 2, p)
    assert torch.equal(x, manual)


def test_load_clip_short_video_loops_and_chunking_changes_nothing(square_mp4):
    """12 frames, window 16: indices wrap (mmaction2 'loop'); repeated frames are processed once."""
    s = Sampling("dense", clip_len=16, frame_interval=1, num_clips=1, test_mode=True)
    p = Preprocess(short_side=20, crop_size=20, crop="center")
    x = load_clip(square_mp4, s, p)
    inds = list(range(12)) + [0, 1, 2, 3]
    assert x.shape == (1, 3, 16, 20, 20)
    assert torch.equal(x, preprocess_frames(decode_frames(square_mp4, inds), 1, p))
    frames = decode_frames(square_mp4, range(12))
    assert torch.equal(crop_views(frames, p, chunk=5), crop_views(frames, p, chunk=16))


# ---- unusable files ---------------------------------------------------------------------------------------


def write_audio_only(path):
    with av.open(str(path), "w", format="mp4") as c:
        stream = c.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(stream.encode(frame))
        c.mux(stream.encode())


def write_zero_frame_video(path):
    with av.open(str(path), "w", format="avi") as c:
        stream = c.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        c.start_encoding()


def write_faststart_truncated(path, frames):
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, frame data cut


@pytest.mark.parametrize(
    "kind,error",
    [
        ("missing", MissingVideo),
        ("zero_bytes", CorruptVideo),
        ("random_bytes", CorruptVideo),
        ("truncated", CorruptVideo),
        ("truncated_data", CorruptVideo),
        ("audio_only", NoVideoStream),
        ("zero_frames", EmptyVideo),
    ],
)
def test_unusable_files_raise_typed_error_naming_the_file(tmp_path, square_mp4, kind, error):
    path = tmp_path / f"bad_{kind}.mp4"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(1).bytes(5000))
    elif kind == "truncated":
        data = square_mp4.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_data":
        write_faststart_truncated(path, np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), np.uint8))
    elif kind == "audio_only":
        write_audio_only(path)
    elif kind == "zero_frames":
        write_zero_frame_video(path)
    with pytest.raises(error, match=f"bad_{kind}.mp4") as info:
        load_clip(path, Sampling("dense", clip_len=16, frame_interval=1), Preprocess(16, 16), strict=True)
    assert isinstance(info.value, VideoError)
    assert "\n" not in str(info.value)


def test_header_overcount_is_resampled_from_the_frames_that_exist(square_mp4, monkeypatch):
    """A header claiming more frames than decode (a few, or twice as many) samples the frames that exist."""
    import stecache.video.decode as decode  # where load_clip looks count_frames up

    true_total = decode.count_frames(square_mp4)
    sampling = Sampling("dense", clip_len=true_total + 1, frame_interval=1)  # needs the last frame
    p = Preprocess(16, 16)
    expected = load_clip(square_mp4, sampling, p)
    monkeypatch.setattr(decode, "count_frames", lambda path: true_total + 1)
    overcount = load_clip(square_mp4, sampling, p)
    torch.testing.assert_close(overcount, expected)
    monkeypatch.setattr(decode, "count_frames", lambda path: true_total * 2)
    info = {}
    torch.testing.assert_close(load_clip(square_mp4, sampling, p, info=info), expected)
    assert info == {"decoded": true_total, "declared": true_total * 2, "partial": False}
