"""Tests of ingestion as users bring data: one class list over all splits, declared multi-label, every
layout and reader, held-out val, real-footage robustness, path safety, segments and boxes, check-data."""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stecache.annotations import load_dataset, read_annotations, resolve_clip, val_from_train
from stecache.cache import create_cache, open_cache
from stecache.checkdata import check_data
from stecache.cli import cli
from stecache.errors import AnnotationError, CorruptVideo, PathOutsideRoot
from stecache.extract import ExtractConfig, dataset_from_annotations, extract
from stecache.video import Preprocess, Sampling, box_pixels, count_frames, crop_views, iter_frames, load_clip

CFG = ExtractConfig(shard_size=4, batch_size=2, workers=0, progress=False)
RAW = Preprocess(short_side=24, crop_size=24, crop="center", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264", fmt=None, gop=None):
    """Real H.264 (or MPEG-4 part 2) file from uint8 RGB frames [N, H, W, 3]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps, options={"g": str(gop)} if gop else {})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def gray(n: int, h: int = 32, w: int = 48, step: int = 20) -> np.ndarray:
    """Frames whose grey level tells their index: frame i is (20 + step * i) everywhere."""
    return np.broadcast_to(
        (20 + step * np.arange(n) % 220).astype(np.uint8)[:, None, None, None], (n, h, w, 3)
    ).copy()


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "c.mp4", gray(8))


def link_videos(root: Path, rels, src: Path) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(src, root / rel)


# ---- one class list ---


def test_folder_splits_share_one_class_list(tmp_path, clip_mp4):
    """train/{jump,run,walk} + val/{run,walk}: `run` is one index in both splits (was 1 and 0)."""
    link_videos(tmp_path, ["train/jump/a.mp4", "train/run/b.mp4", "train/walk/c.mp4"], clip_mp4)
    link_videos(tmp_path, ["val/run/d.mp4", "val/walk/e.mp4"], clip_mp4)
    ds = load_dataset([("train", tmp_path / "train"), ("val", tmp_path / "val")], tmp_path)
    assert ds.classes == ("jump", "run", "walk")
    got = {c.path: ds.classes[c.labels[0]] for c in ds.clips}
    assert got == {
        "train/jump/a.mp4": "jump",
        "train/run/b.mp4": "run",
        "train/walk/c.mp4": "walk",
        "val/run/d.mp4": "run",
        "val/walk/e.mp4": "walk",
    }
    create_cache(
        tmp_path / "c.zarr",
        clips=ds.clips,
        class_names=ds.classes,
        multi_label=False,
        feature_shape=(1, 2, 1, 1),
        num_views=1,
        provenance={},
    )
    c = open_cache(tmp_path / "c.zarr")
    assert c.class_names == ("jump", "run", "walk")
    assert [c.class_names[k] for k in c.label_index()] == [p.split("/")[1] for p in got]


def test_csv_names_union_over_splits_and_bare_indices_take_k_from_all_splits(tmp_path):
    tr = write(tmp_path / "train.csv", "path,label\na.mp4,walk\nb.mp4,run\n")
    va = write(tmp_path / "val.csv", "path,label\nc.mp4,jump\n")
    ds = load_dataset([("train", tr), ("val", va)], tmp_path)
    assert ds.classes == ("jump", "run", "walk") and [c.labels for c in ds.clips] == [(2,), (1,), (0,)]
    tr = write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 1\n")
    va = write(tmp_path / "val.txt", "c.mp4 4\n")
    ds = load_dataset([("train", tr), ("val", va)], tmp_path)
    assert ds.classes == ("0", "1", "2", "3", "4")
    assert "indices" in ds.provenance["classes_from"]  # not "--classes": the user gave none


def test_tinyvirat_class_map_is_the_class_list_and_its_own_tree(tmp_path, clip_mp4):
    """K = len(class_map.json) (26), not largest label + 1; val and test in one call under videos/<split>/."""
    names = [f"activity_{i:02d}" for i in range(26)]
    root = tmp_path / "TinyVIRAT_V2"
    write(root / "class_map.json", json.dumps({n: i for i, n in enumerate(names)}))
    val = [{"id": 7, "path": "VIRAT_S_1/00007.mp4", "dim": [8, 32, 48], "label": [names[3], names[19]]}]
    write(root / "tiny_val_v2.json", json.dumps(val))
    write(root / "tiny_test_v2_public.json", json.dumps([{"id": 0, "path": "VIRAT_S_2/00000.mp4"}]))
    link_videos(root, ["videos/val/VIRAT_S_1/00007.mp4", "videos/test/VIRAT_S_2/00000.mp4"], clip_mp4)
    result = CliRunner().invoke(
        cli,
        [
            "check-data",
            "--annotations",
            f"val={root / 'tiny_val_v2.json'}",
            "--annotations",
            f"test={root / 'tiny_test_v2_public.json'}",
            "--data-root",
            str(root),
            "--format",
            "json",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == names and report["multi_label"]
    assert report["splits"] == {"val": {"clips": 1, "ok": 1}, "test": {"clips": 1, "ok": 1}}
    ds = load_dataset([("val", root / "tiny_val_v2.json"), ("test", root / "tiny_test_v2_public.json")], root)
    assert [(c.path, c.labels) for c in ds.clips] == [
        ("videos/val/VIRAT_S_1/00007.mp4", (3, 19)),
        ("videos/test/VIRAT_S_2/00000.mp4", ()),
    ]


def test_numeric_class_names_are_names_only_when_labels_are_names(tmp_path):
    """classes 1..7 with labels 0 and 1: indices (0 -> '1', 1 -> '2'), never both to class 0."""
    classes = write(tmp_path / "classes.txt", "\n".join(str(i) for i in range(1, 8)) + "\n")
    lst = write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 1\n")
    assert [c.labels for c in read_annotations(lst, data_root=tmp_path, classes=classes)] == [(0,), (1,)]
    csv = write(tmp_path / "train.csv", "path,label\na.mp4,7\nb.mp4,1\n")  # only names fit (7 is no index)
    assert [c.labels for c in read_annotations(csv, data_root=tmp_path, classes=classes)] == [(6,), (0,)]
    csv = write(tmp_path / "train.csv", "path,label\na.mp4,1\nb.mp4,2\n")  # both fit and differ: say which
    with pytest.warns(UserWarning, match="both names and indices .* read as class names"):
        assert [c.labels for c in read_annotations(csv, data_root=tmp_path, classes=classes)] == [(0,), (1,)]
    lst = write(tmp_path / "x.txt", "a.mp4 1\nb.mp4 2\n")
    with pytest.warns(UserWarning, match="read as indices"):
        assert [c.labels for c in read_annotations(lst, data_root=tmp_path, classes=classes)] == [(1,), (2,)]
    write(tmp_path / "c3.txt", "1\n2\n10\n")
    bad = write(tmp_path / "mix.csv", "path,label\na.mp4,10\nb.mp4,0\n")
    with pytest.raises(
        AnnotationError, match=r"mix\.csv:3: label '0' is no class name while '10' is no index"
    ):
        read_annotations(bad, data_root=tmp_path, classes=tmp_path / "c3.txt")


# ---- mmaction2 lists as users write them ---


def test_mmaction_paths_with_spaces_duplicates_and_rawframes(tmp_path):
    for i in range(3):  # a frame folder: img_00001.png ...
        from PIL import Image

        (tmp_path / "frames" / "clip one").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(
            tmp_path / "frames/clip one" / f"img_{i + 1:05d}.png"
        )
    text = "my videos/a b.mp4 2\nx.mp4 1\nfrms.mp4 0\nx.mp4 1\nframes/clip one 3 1\n"
    f = write(tmp_path / "train.txt", text)
    with pytest.warns(UserWarning, match=r"train\.txt:4: 'x\.mp4' repeats line 2 with the same labels"):
        clips = read_annotations(f, data_root=tmp_path)
    assert [(c.path, c.labels) for c in clips] == [
        ("my videos/a b.mp4", (2,)),
        ("x.mp4", (1,)),
        ("frms.mp4", (0,)),
        ("frames/clip one", (1,)),
    ]
    write(f, "x.mp4 1\nx.mp4 2\n")
    with pytest.raises(AnnotationError, match=r"train\.txt:2: 'x\.mp4' is listed again with other labels"):
        read_annotations(f, data_root=tmp_path)
    x = load_clip(
        tmp_path / "frames/clip one",
        Sampling("dense", clip_len=3, frame_interval=1),
        Preprocess(16, 16, mean=(0,) * 3, std=(1,) * 3),
    )
    assert x[0, 0, :, 0, 0].tolist() == [0.0, 40.0, 80.0]  # frames read from the images, in order


def test_mmaction_rawvideo_list_is_refused_naming_file_and_line(tmp_path, clip_mp4):
    """mmaction2 RawVideoDataset ('video_dir label num_clips positive_clip ...', a folder of part_N.mp4
    clips, one drawn at random per visit) has no clip per row: refused in one line, whatever the flags.
    Before, its numbers were read as rawframe counts and labels ('4 labels ... pass --multi-label',
    'with_offset', or num_clips taken as the label)."""
    parts = [f"raw/D32_1gwq35E/part_{i}.mp4" for i in range(4)] + ["raw/T4h/part_0.mp4", "raw/4uZ/part_0.mp4"]
    link_videos(tmp_path, [*parts, "raw/4uZ/part_1.mp4", "ok.mp4"], clip_mp4)
    lines = ["raw/D32_1gwq35E 2 4 0 1 2", "raw/T4h 1 1 0", "raw/4uZ 0 2"]  # the last: no positive clip
    for line in lines:
        f = write(tmp_path / "train.txt", f"ok.mp4 1\n{line}\n")
        rel, label = line.split()[:2]
        for multi in (False, True):
            with pytest.raises(AnnotationError) as e:
                read_annotations(f, data_root=tmp_path, classes=["a", "b", "c", "d", "e"], multi_label=multi)
            msg = str(e.value)
            assert msg.startswith(f"{f}:2: {rel!r} is a folder of videos, an mmaction2 RawVideoDataset line")
            assert msg.endswith(f"e.g. '{rel}/part_0.mp4 {label}'") and "\n" not in msg
    args = ["check-data", "--annotations", f"train={f}", "--data-root", str(tmp_path), "--workers", "0"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "train.txt:2: 'raw/4uZ' is a folder of videos" in r.output
    assert "Traceback" not in r.output and "part_0.mp4 0'" in r.output  # the whole message survives


# ---- built-in readers ---


def test_ucf101_hmdb51_ssv2_kinetics_readers(tmp_path):
    u = tmp_path / "ucfTrainTestlist"
    write(u / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")
    write(u / "trainlist01.txt", "Archery/v_Archery_g01_c01.avi 2\nApplyEyeMakeup/v_A_g01_c01.avi 1\n")
    write(u / "testlist01.txt", "Archery/v_Archery_g07_c01.avi\n")
    ds = load_dataset([(None, u / "trainlist01.txt"), (None, u / "testlist01.txt")], tmp_path)
    assert ds.classes == ("ApplyEyeMakeup", "Archery")
    assert [(c.split, c.labels) for c in ds.clips] == [("train", (1,)), ("train", (0,)), ("test", (1,))]

    h = tmp_path / "splits"
    write(h / "brush_hair_test_split1.txt", "a.avi 1\nb.avi 2\nc.avi 0\n")
    write(h / "wave_test_split1.txt", "d.avi 1\n")
    write(h / "wave_test_split2.txt", "d.avi 2\n")
    ds = load_dataset([(None, h)], tmp_path)
    assert ds.classes == ("brush_hair", "wave")
    assert [(c.path, c.split, c.labels) for c in ds.clips] == [
        ("brush_hair/a.avi", "train", (0,)),
        ("brush_hair/b.avi", "test", (0,)),
        ("wave/d.avi", "train", (1,)),
    ]

    s = tmp_path / "ssv2"
    write(s / "labels.json", json.dumps({"Holding something": "1", "Moving something up": "0"}))
    write(
        s / "train.json",
        json.dumps([{"id": "12", "template": "Holding [something]", "placeholders": ["cup"]}]),
    )
    write(s / "test.json", json.dumps([{"id": "99"}]))
    ds = load_dataset([("train", s / "train.json"), ("test", s / "test.json")], tmp_path)
    assert ds.classes == ("Moving something up", "Holding something")
    assert [(c.path, c.labels) for c in ds.clips] == [("12.webm", (1,)), ("99.webm", ())]

    k = write(
        tmp_path / "kinetics.csv",
        'label,youtube_id,time_start,time_end,split\n"riding a bike",abc,10,20,train\nyoga,xyz,0,10,train\n',
    )
    write(tmp_path / "kin/yoga/xyz_000000_000010.mp4")  # a trimmed download
    ds = load_dataset([(None, k)], tmp_path / "kin")
    assert [(c.path, c.start, c.end, ds.classes[c.labels[0]]) for c in ds.clips] == [
        ("abc.mp4", 10.0, 20.0, "riding a bike"),
        ("yoga/xyz_000000_000010.mp4", None, None, "yoga"),
    ]


def test_one_csv_with_split_column_and_per_split_data_roots(tmp_path):
    f = write(tmp_path / "data.csv", "path,label,split\na.mp4,run,train\nb.mp4,walk,val\nc.mp4,run,test\n")
    ds = load_dataset([(None, f)], {None: tmp_path / "main", "val": tmp_path / "other"})
    assert [(c.split, c.root) for c in ds.clips] == [
        ("train", None),
        ("val", str(tmp_path / "other")),
        ("test", None),
    ]
    assert ds.root_of(ds.clips[1]) == tmp_path / "other"
    with pytest.raises(AnnotationError, match=r"data\.csv: no --data-root for split 'test' \(given for tr"):
        load_dataset([(None, f)], {"train": tmp_path / "main", "val": tmp_path / "other"})  # was train's


# ---- held-out validation ---


def test_val_from_train_is_stratified_seeded_and_recorded(tmp_path):
    lines = "".join(f"v{i}.mp4 {i % 3}\n" for i in range(60)) + "w.mp4 3\n"  # class 3 has one clip
    ds = load_dataset([("train", write(tmp_path / "train.txt", lines))], tmp_path)
    held = val_from_train(ds, 0.2, seed=1)
    val = held.split("val")
    assert sorted(np.bincount([c.labels[0] for c in val], minlength=4).tolist()) == [0, 4, 4, 4]
    assert held.provenance["val_from_train"] == {
        "fraction": 0.2,
        "seed": 1,
        "val": 12,
        "method": "stratified",
    }
    assert [c.clip_id for c in val_from_train(ds, 0.2, seed=1).split("val")] == [c.clip_id for c in val]
    assert [c.clip_id for c in val_from_train(ds, 0.2, seed=2).split("val")] != [c.clip_id for c in val]
    with pytest.raises(AnnotationError, match="already has a val split"):
        val_from_train(held, 0.2)


def test_val_from_train_multilabel_iterative_stratification_keeps_each_label_share(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(300):
        labs = sorted({int(rng.integers(0, 2)), *([int(rng.integers(2, 8))] if rng.random() < 0.6 else [])})
        lines.append(f"v{i}.mp4 {' '.join(map(str, labs))}\n")
    ds = load_dataset([("train", write(tmp_path / "train.txt", "".join(lines)))], tmp_path, multi_label=True)
    held = val_from_train(ds, 0.15, seed=0)
    y = lambda clips: np.array([np.isin(np.arange(8), c.labels) for c in clips])  # noqa: E731
    share = y(held.split("val")).sum(0) / y(ds.clips).sum(0)
    assert np.abs(share - 0.15).max() < 0.03, share
    assert held.provenance["val_from_train"]["method"] == "iterative-stratification"


# ---- real footage ---


def test_header_overstating_frame_count_is_sampled_from_existing_frames(tmp_path):
    """An MPEG-4 AVI whose header claims 3x its frames: sampled from the 12 that exist, not a failure."""
    path = write_video(tmp_path / "a.avi", gray(12), codec="mpeg4")
    data = bytearray(path.read_bytes())
    for tag, off in ((b"avih", 8 + 16), (b"strh", 8 + 32)):  # dwTotalFrames, dwLength
        i = data.find(tag) + off
        struct.pack_into("<I", data, i, struct.unpack_from("<I", data, i)[0] * 3)
    bad = tmp_path / "b.avi"
    bad.write_bytes(bytes(data))
    assert count_frames(bad) == 36 and count_frames(path) == 12
    s, p, info = Sampling("uniform", clip_len=4), Preprocess(16, 16), {}
    torch.testing.assert_close(load_clip(bad, s, p, info=info), load_clip(path, s, p))
    assert info == {"decoded": 12, "declared": 36, "partial": False}


def test_joined_ts_segments_of_different_sizes_are_resized_one_by_one(tmp_path):
    a = write_video(tmp_path / "a.ts", gray(6, 32, 48), fmt="mpegts")
    b = write_video(tmp_path / "b.ts", gray(6, 48, 64, step=30), fmt="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())  # as joined HLS segments
    frames = [f for _, f in iter_frames(joined, range(12))]
    assert {f.shape for f in frames} == {(32, 48, 3), (48, 64, 3)}
    p = Preprocess(24, 24)
    x = load_clip(joined, Sampling("dense", clip_len=12, frame_interval=1), p)  # every frame
    expected = torch.cat([crop_views(np.stack(frames[:6]), p), crop_views(np.stack(frames[6:]), p)], dim=1)
    torch.testing.assert_close(x[0].permute(1, 0, 2, 3), expected[0])


def test_broken_stream_is_partial_recorded_and_strict_fails_it(tmp_path, fake_backbone):
    path = tmp_path / "v" / "cut.mp4"
    rng = np.random.default_rng(0)
    path.parent.mkdir()
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for f in rng.integers(0, 256, (20, 32, 32, 3), np.uint8):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # header intact, data cut
    info = {}
    load_clip(path, Sampling("uniform", clip_len=4), Preprocess(16, 16), info=info)
    assert info["partial"] and 0 < info["decoded"] < info["declared"] == 20
    with pytest.raises(CorruptVideo, match="decoding failed after"):
        load_clip(path, Sampling("uniform", clip_len=4), Preprocess(16, 16), strict=True)
    link_videos(tmp_path, ["v/ok.mp4"], write_video(tmp_path / "src.mp4", gray(8)))
    ds = load_dataset([("train", write(tmp_path / "train.txt", "v/cut.mp4 0\nv/ok.mp4 1\n"))], tmp_path)
    s = extract(ds, tmp_path / "c.zarr", fake_backbone, cfg=CFG)
    assert s["failed"] == [] and s["partial"] == [("v/cut.mp4", f"{info['decoded']}/20 frames decoded")]
    c = open_cache(tmp_path / "c.zarr")
    assert c.done.all() and c.partial.tolist() == [f"{info['decoded']}/20 frames decoded", ""]
    assert "partial       row 0 v/cut.mp4" in c.describe()
    strict = extract(
        ds, tmp_path / "s.zarr", fake_backbone, cfg=CFG.replace(strict_decode=True, allow_failures=True)
    )
    assert [cid for cid, _ in strict["failed"]] == ["v/cut.mp4"]


# ---- path safety ---


def test_paths_outside_the_root_are_refused_by_id_and_never_opened(
    tmp_path, clip_mp4, fake_backbone, monkeypatch
):
    root, outside = tmp_path / "root", tmp_path / "secret"
    link_videos(outside, ["s.mp4"], clip_mp4)
    link_videos(root, ["in.mp4"], clip_mp4)
    (root / "out.mp4").symlink_to(outside / "s.mp4")  # a link inside pointing outside
    (root / "ok.mp4").symlink_to(root / "in.mp4")  # a link inside pointing inside
    (root / "dir").symlink_to(outside, target_is_directory=True)
    write(root / "list.m3u8", "#EXTM3U\n#EXTINF:1,\n../secret/s.mp4\n")
    write(root / "sneaky.mp4", "#EXTM3U\n#EXTINF:1,\n/etc/passwd\n")  # a playlist under a video suffix
    with pytest.raises(PathOutsideRoot, match="outside the data root"):
        resolve_clip(root, "out.mp4")
    assert resolve_clip(root, "ok.mp4") == (root / "in.mp4").resolve()
    lst = write(
        tmp_path / "train.txt", "in.mp4 0\nout.mp4 0\nok.mp4 1\ndir/s.mp4 1\nlist.m3u8 0\nsneaky.mp4 1\n"
    )
    ds = load_dataset([("train", lst)], root)
    opened = []
    import stecache.video.decode as decode  # where count_frames / iter_frames look _open up

    real_open = decode._open
    monkeypatch.setattr(decode, "_open", lambda p: opened.append(Path(p).name) or real_open(p))
    s = extract(ds, tmp_path / "c.zarr", fake_backbone, cfg=CFG.replace(allow_failures=True))
    failed = dict(s["failed"])
    assert sorted(failed) == ["dir/s.mp4", "list.m3u8", "out.mp4", "sneaky.mp4"]
    assert "PathOutsideRoot" in failed["out.mp4"] and "playlist" in failed["list.m3u8"]
    assert "playlist" in failed["sneaky.mp4"]
    assert "in.mp4" in opened and "s.mp4" not in opened  # the file outside was never opened
    for bad in ("concat:a.mp4|b.mp4 0", "http://x/a.mp4 0", "/etc/passwd 0", "../x.mp4 0"):
        with pytest.raises(AnnotationError):
            read_annotations(write(tmp_path / "bad.txt", bad + "\n"), data_root=root)


# ---- segments and boxes ---


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """20 s at 10 fps, 64x48: grey level 20 + 5 * (i % 40) tells frame i; a red box at x 16..40, y 8..32."""
    n = 200
    frames = np.broadcast_to(
        (20 + 5 * (np.arange(n) % 40)).astype(np.uint8)[:, None, None, None], (n, 48, 64, 3)
    ).copy()
    frames[:, 8:32, 16:40] = (255, 0, 0)
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", frames, gop=20)


def test_segment_decodes_the_frames_of_its_time_span(long_video):
    got = dict(iter_frames(long_video, range(20), start=5.0, end=7.0))
    levels = [round((float(f[40:, :, 1].mean()) - 20) / 5) for f in got.values()]  # below the box
    assert levels == [(50 + i) % 40 for i in range(20)]
    s = Sampling("uniform", clip_len=4)
    x = load_clip(long_video, s, RAW, start=5.0, end=7.0)  # [1, 3, T, 24, 24]
    from stecache.video import segment_frames, uniform_sample

    assert segment_frames(long_video, 5.0, 7.0) == 20
    want = [20 + 5 * ((50 + int(i)) % 40) for i in uniform_sample(20, 4, 1, True)[0]]
    np.testing.assert_allclose(x[0, 1, :, 23, 12].numpy(), want, atol=3)  # bottom rows: grey, no box


def test_box_is_cropped_before_the_resize_in_pixels_or_normalised(long_video):
    s = Sampling("uniform", clip_len=2)
    for box in ((16, 8, 40, 32), (16 / 64, 8 / 48, 40 / 64, 32 / 48)):
        x = load_clip(long_video, s, RAW, start=1.0, end=2.0, box=box)  # box 24x24 = crop size: no resize
        inner = x[0, :, :, 2:-2, 2:-2]
        assert inner[0].min() > 230 and inner[1:].abs().max() < 25, "the crop holds the red box only"
    assert box_pixels((16, 8, 40, 32), 48, 64, margin=0.5) == (0, 4, 44, 52)  # grown 12 px, clipped at top
    x = load_clip(
        long_video,
        s,
        Preprocess(48, 48, crop="resize", mean=(0,) * 3, std=(1,) * 3),
        start=1.0,
        end=2.0,
        box=(16, 8, 40, 32),
        box_margin=0.5,
    )
    assert x[0, 0, 0, 24, 24] > 230 and x[0, 1, 0, 24, 24] < 25  # centre: red
    assert abs(x[0, 0, 0, 46, 2] - x[0, 1, 0, 46, 2]) < 10  # corner: grey margin around the box


def test_csv_segments_and_boxes_give_many_clips_from_one_file(tmp_path, long_video, fake_backbone):
    os.link(long_video, tmp_path / "long.mp4")
    f = write(
        tmp_path / "train.csv",
        "path,label,start,end,x1,y1,x2,y2\nlong.mp4,a,0,2,,,,\n"
        "long.mp4,b,5,7,16,8,40,32\nlong.mp4,a,18,19.5,0,0,0.5,0.5\nlong.mp4,b,30,31,,,,\n",
    )
    ds = load_dataset([("train", f)], tmp_path)
    assert [c.clip_id for c in ds.clips] == [
        "long.mp4@0.0-2.0",
        "long.mp4@5.0-7.0#16,8,40,32",
        "long.mp4@18.0-19.5#0,0,0.5,0.5",
        "long.mp4@30.0-31.0",
    ]
    report = check_data(ds, workers=0)
    assert [p["status"] for p in report["problems"]] == ["segment_outside"] and report["errors"] == 1
    s = extract(ds, tmp_path / "c.zarr", fake_backbone, cfg=CFG.replace(allow_failures=True))
    assert [cid for cid, _ in s["failed"]] == ["long.mp4@30.0-31.0"]
    ref = fake_backbone(
        load_clip(
            long_video,
            fake_backbone.sampling,
            fake_backbone.preprocess,
            start=5.0,
            end=7.0,
            box=(16, 8, 40, 32),
        )
    )
    np.testing.assert_allclose(open_cache(tmp_path / "c.zarr").read([1])[0], ref[0].numpy(), atol=1e-3)


def test_a_sub_pixel_pixel_box_is_refused_as_a_typo(tmp_path):
    f = write(tmp_path / "a.csv", "path,label,x1,y1,x2,y2\na.mp4,a,0.1,0.1,0.5,2\nb.mp4,a,0,0,0.5,0.9\n")
    with pytest.raises(AnnotationError, match=r"a.csv:2: box 0.1,0.1,0.5,2.0: in pixels .* under one pixel"):
        read_annotations(f, data_root=tmp_path)  # was a 1x2 pixel crop, upscaled
    f.write_text("path,label,x1,y1,x2,y2\na.mp4,a,10,10,10.5,20\nb.mp4,a,10,10,11,20\n")
    with pytest.raises(AnnotationError, match=r"a.csv:2: box 10.0,10.0,10.5,20.0"):
        read_annotations(f, data_root=tmp_path)
    f.write_text("path,label,x1,y1,x2,y2\na.mp4,a,0.1,0.1,0.5,0.9\nb.mp4,a,10,10,11,20\n")
    assert len(read_annotations(f, data_root=tmp_path)) == 2  # normalised, and a 1-pixel-wide pixel box


# ---- check-data, info, import-h5 ---


def test_check_data_reports_a_broken_dataset_without_a_cache(tmp_path, clip_mp4):
    link_videos(tmp_path / "root", ["a.mp4", "b.mp4", "c.mp4"], clip_mp4)
    write(tmp_path / "root/bad.mp4", "not a video")
    (tmp_path / "root/link.mp4").symlink_to(clip_mp4)  # outside the root
    lst = write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 1\nbad.mp4 1\nmissing.mp4 0\nlink.mp4 0\na.mp4 0\n")
    val = write(tmp_path / "val.txt", "c.mp4 2\n")
    args = [
        "check-data",
        "--annotations",
        f"train={lst}",
        "--annotations",
        f"val={val}",
        "--data-root",
        str(tmp_path / "root"),
        "--workers",
        "2",
    ]
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert report["splits"]["train"] == {"clips": 5, "ok": 2, "undecodable": 1, "missing": 1, "escaping": 1}
    assert report["classes_without_train_clips"] == ["2"] and len(report["warnings"]) == 1
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 1 and "warning: class '2' has no training clip" in table.output
    assert "repeats line 1 with the same labels" in table.output and "3 error(s)" in table.output
    assert not list(tmp_path.glob("**/*.zarr"))


def test_check_data_warns_about_a_single_label_dataset_of_one_class():
    from stecache.checkdata import format_report

    report = {"classes": ["walk"], "multi_label": False, "splits": {"train": {"clips": 2, "ok": 2}},
              "per_class": {"train": [2]}, "classes_without_train_clips": [], "problems": [],
              "errors": 0}  # fmt: skip
    assert "warning: one class in a single-label dataset: train-head refuses it" in format_report(report)
    assert "one class" not in format_report({**report, "multi_label": True})  # a sigmoid: a fine detector


def test_info_warns_about_a_class_without_training_clips(tmp_path, clip_mp4, fake_backbone):
    link_videos(tmp_path, ["a.mp4", "b.mp4"], clip_mp4)
    tr = write(tmp_path / "train.csv", "path,label\na.mp4,run\n")
    va = write(tmp_path / "val.csv", "path,label\nb.mp4,walk\n")
    ds = dataset_from_annotations([("train", tr), ("val", va)], tmp_path)
    assert ds.classes == ("run", "walk")
    extract(ds, tmp_path / "c.zarr", fake_backbone, cfg=CFG)
    out = CliRunner().invoke(cli, ["info", str(tmp_path / "c.zarr")]).output
    assert "warning       class 'walk' has no training clip" in out
    assert [ln.split() for ln in out.splitlines() if ln.startswith(("run ", "walk "))] == [
        ["run", "1", "0"],
        ["walk", "0", "1"],
    ]
    with pytest.raises(
        AnnotationError, match=r"val\.csv:2: clip 'a\.mp4' appears again \(split val here, split train in "
    ):
        dataset_from_annotations([("train", tr), ("val", write(va, "path,label\na.mp4,walk\n"))], tmp_path)
    lst = write(tmp_path / "list.txt", "a.mp4 0\n")  # one list given for two splits: the line is the same
    with pytest.raises(AnnotationError, match=r"list\.txt:1: clip 'a\.mp4' appears again \(split val here"):
        dataset_from_annotations([("train", lst), ("val", lst)], tmp_path)


def test_import_h5_split_from_dataset_or_flag(tmp_path):
    import h5py

    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
        f["labels"] = np.array([0, 1, 0])
    r = CliRunner().invoke(
        cli, ["import-h5", str(tmp_path / "f.h5"), str(tmp_path / "c.zarr"), "--split", "test"]
    )
    assert r.exit_code == 0, r.output
    assert open_cache(tmp_path / "c.zarr").split.tolist() == ["test"] * 3
    with h5py.File(tmp_path / "f.h5", "a") as f:
        f["split"] = np.array([b"train", b"val", b"test"])
    r = CliRunner().invoke(cli, ["import-h5", str(tmp_path / "f.h5"), str(tmp_path / "d.zarr")])
    assert open_cache(tmp_path / "d.zarr").split.tolist() == ["train", "val", "test"]
    r = CliRunner().invoke(
        cli, ["import-h5", str(tmp_path / "f.h5"), str(tmp_path / "e.zarr"), "--split", "x"]
    )
    assert r.exit_code == 1 and "has a 'split' dataset" in r.output


# ---- property: every stored label is the index of its true class name ---

NAMES = ["jump", "run", "walk", "sit", "wave", "clap"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["folder", "csv", "list"]),
    subsets=st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6), min_size=1, max_size=3),
    data=st.data(),
)
def test_every_stored_label_is_the_index_of_its_true_class_name(tmp_path_factory, fmt, subsets, data):
    root = tmp_path_factory.mktemp("prop")
    splits = ["train", "val", "test"][: len(subsets)]
    truth, items = {}, []
    given_classes = data.draw(st.sampled_from([None, tuple(data.draw(st.permutations(NAMES)))]))
    if fmt == "list" and given_classes is None:
        given_classes = tuple(NAMES)  # a list writes indices: the list is the key to them
    for split, names in zip(splits, subsets, strict=False):
        rows = []
        for j, name in enumerate(names):
            rel = f"{split}/{name}/c{j}.mp4"
            write(root / rel)
            truth[rel] = name
            rows.append((rel, name))
        if fmt == "folder":
            items.append((split, root / split))
        elif fmt == "csv":
            items.append(
                (split, write(root / f"{split}.csv", "path,label\n" + "".join(f"{r},{n}\n" for r, n in rows)))
            )
        else:
            text = "".join(f"{r} {given_classes.index(n)}\n" for r, n in rows)
            items.append((split, write(root / f"{split}.txt", text)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(items, root, classes=given_classes)
    url = root / "c.zarr"
    create_cache(
        url,
        clips=ds.clips,
        class_names=ds.classes,
        multi_label=False,
        feature_shape=(1, 1, 1, 1),
        num_views=1,
        provenance={},
    )
    c = open_cache(url)
    stored = {
        cid: c.class_names[k] for cid, k in zip(c.clip_id.tolist(), c.label_index().tolist(), strict=True)
    }
    assert stored == truth
    if given_classes is None:
        assert c.class_names == tuple(sorted({n for names in subsets for n in names}))


def test_train_head_selects_on_the_split_named_by_val_split(tmp_path):
    from stecache import train as T
    from stecache.cache import Row
    from stecache.errors import EmptySplit

    splits = ["train"] * 8 + ["holdout"] * 4 + ["test"] * 4
    rows = [Row(f"c{i}", (i % 2,), s) for i, s in enumerate(splits)]
    url = str(tmp_path / "c.zarr")
    c = create_cache(url, clips=rows, class_names=("a", "b"), multi_label=False, feature_shape=(1, 4, 1, 1),
                     num_views=1, provenance={})  # fmt: skip
    x = np.zeros((16, 1, 4, 1, 1), np.float32)
    x[:, 0, 0, 0, 0] = [i % 2 for i in range(16)]
    c.write_shard(0, x, None, np.ones(16, bool), [""] * 16)
    with pytest.raises(EmptySplit, match="'val'"):
        T.train(T.TrainConfig(head="meanfc", epochs=1), url, runs_root=tmp_path, progress=False)
    r = CliRunner().invoke(cli, ["train-head", "--head", "meanfc", "--cache", url, "--epochs", "1",
                                 "--val-split", "holdout", "--runs", str(tmp_path / "runs")])  # fmt: skip
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*/config.json")).parent
    assert json.loads((run / "config.json").read_text())["config"]["val_split"] == "holdout"
    assert json.loads((run / "metrics.json").read_text())["val_clips"] == 4  # the 4 holdout clips


def test_val_from_train_is_recorded_in_the_cache_provenance(tmp_path, clip_mp4, fake_backbone):
    link_videos(tmp_path, [f"v{i}.mp4" for i in range(6)], clip_mp4)
    lst = write(tmp_path / "train.txt", "".join(f"v{i}.mp4 {i % 2}\n" for i in range(6)))
    ds = dataset_from_annotations([("train", lst)], tmp_path, val_from_train=0.34, seed=3)
    extract(ds, tmp_path / "c.zarr", fake_backbone, cfg=CFG)
    c = open_cache(tmp_path / "c.zarr")
    assert c.attrs["val_from_train"] == {"fraction": 0.34, "seed": 3, "val": 2, "method": "stratified"}
    assert sorted(c.split.tolist()) == ["train"] * 4 + ["val"] * 2
    assert sorted(c.label_index()[c.split == "val"].tolist()) == [0, 1]  # one per class: stratified


def test_annotation_format_can_be_named_and_the_table_matches_the_readers(tmp_path, clip_mp4):
    from stecache.annotations import READERS
    from stecache.cli.data import ANNOTATION_FORMATS

    assert ANNOTATION_FORMATS == tuple(sorted(READERS))
    link_videos(tmp_path, ["a.mp4"], clip_mp4)
    f = write(tmp_path / "list.data", "a.mp4 0\n")  # a suffix that tells nothing
    args = ["check-data", "--annotations", f"train={f}", "--data-root", str(tmp_path), "--workers", "0"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "cannot tell the format" in r.output
    r = CliRunner().invoke(cli, [*args, "--annotation-format", "mmaction"])
    assert r.exit_code == 0, r.output


def test_cli_data_root_per_split(tmp_path, clip_mp4):
    link_videos(tmp_path / "a", ["x.mp4"], clip_mp4)
    link_videos(tmp_path / "b", ["y.mp4"], clip_mp4)
    tr, va = write(tmp_path / "train.txt", "x.mp4 0\n"), write(tmp_path / "val.txt", "y.mp4 0\n")
    args = ["check-data", "--annotations", f"train={tr}", "--annotations", f"val={va}", "--format", "json"]
    r = CliRunner().invoke(cli, [*args, "--data-root", str(tmp_path / "a")])
    assert (
        r.exit_code == 1 and json.loads(r.output[: r.output.rindex("}") + 1])["splits"]["val"]["missing"] == 1
    )
    r = CliRunner().invoke(
        cli, [*args, "--data-root", str(tmp_path / "a"), "--data-root", f"val={tmp_path / 'b'}"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["splits"] == {"train": {"clips": 1, "ok": 1}, "val": {"clips": 1, "ok": 1}}
