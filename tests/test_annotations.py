"""Tests for the annotation readers: every format parses, every malformed input names file and line."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stecache.errors import AnnotationError
from stecache.video import Clip, load_dataset_dir, read_annotations, read_classes

CLASSES = ("walk", "run", "jump")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- each format parses ----------------------------------------------------------------------------------


def test_mmaction_single_label(tmp_path):
    f = write(tmp_path / "train_list.txt", "a/x.mp4 0\r\n\nb/y.mp4 2\n./c.mp4   1\n")
    clips = read_annotations(f, data_root=tmp_path)
    assert clips == [
        Clip("a/x.mp4", (0,), "train", "a/x.mp4"),
        Clip("b/y.mp4", (2,), "train", "b/y.mp4"),
        Clip("c.mp4", (1,), "train", "c.mp4"),
    ]


def test_mmaction_multi_label_and_split_argument(tmp_path):
    f = write(tmp_path / "list.txt", "x.mp4 0 2\ny.mp4 1\n")
    kw = dict(data_root=tmp_path, classes=CLASSES)
    clips = read_annotations(f, "mmaction", split="val", multi_label=True, **kw)
    assert [c.labels for c in clips] == [(0, 2), (1,)] and {c.split for c in clips} == {"val"}
    with pytest.raises(AnnotationError, match=r"list\.txt:1: 2 labels \(0 2\) in a single-label list; pass"):
        read_annotations(f, "mmaction", **kw)


def test_tinyvirat_json_with_class_map(tmp_path):
    write(tmp_path / "class_map.json", json.dumps({"Opening": 1, "activity_walking": 0, "Loading": 2}))
    records = [
        {"id": "00000", "video_id": "VIRAT_S_1", "path": "VIRAT_S_1/00000.mp4", "dim": [64, 48, 48],
         "label": ["activity_walking", "Loading"]},
        {"id": "00001", "video_id": "VIRAT_S_1", "path": "VIRAT_S_1/00001.mp4", "dim": [40, 24, 24],
         "label": ["Opening"]},
    ]  # fmt: skip
    f = write(tmp_path / "tiny_val_v2.json", json.dumps(records, indent=1))
    clips = read_annotations(f, data_root=tmp_path / "videos" / "val")
    assert clips == [
        Clip("VIRAT_S_1/00000.mp4", (0, 2), "val", "val/00000"),
        Clip("VIRAT_S_1/00001.mp4", (1,), "val", "val/00001"),
    ]
    assert read_classes(tmp_path / "class_map.json") == ("activity_walking", "Opening", "Loading")


def test_tinyvirat_test_file_without_labels(tmp_path):
    f = write(tmp_path / "tiny_test_v2_public.json", json.dumps([{"id": "00000", "path": "00000.mp4"}]))
    clips = read_annotations(f, data_root=tmp_path, classes=CLASSES)
    assert clips == [Clip("00000.mp4", (), "test", "test/00000")]


def test_csv_names_indices_multilabel_and_split_column(tmp_path):
    text = 'path,label,split\nx.mp4,run,train\ny.mp4,0;jump,val\n"z, 1.mp4",2,test\n'
    f = write(tmp_path / "ann.csv", text)
    clips = read_annotations(f, data_root=tmp_path, classes=CLASSES)
    assert clips == [
        Clip("x.mp4", (1,), "train", "x.mp4"),
        Clip("y.mp4", (0, 2), "val", "y.mp4"),
        Clip("z, 1.mp4", (2,), "test", "z, 1.mp4"),
    ]
    assert [c.path for c in read_annotations(f, data_root=tmp_path, classes=CLASSES, split="val")] == [
        "y.mp4"
    ]


def test_csv_indices_without_class_list_and_id_column(tmp_path):
    f = write(tmp_path / "test.csv", "id,label,path\nc1,1,v/a.mp4\n")
    assert read_annotations(f, data_root=tmp_path) == [Clip("v/a.mp4", (1,), "test", "c1")]


def test_folder_per_class(tmp_path):
    for rel in ["data/run/b.mp4", "data/run/a.avi", "data/walk/c.mp4", "data/walk/notes.txt"]:
        write(tmp_path / rel, "")
    (tmp_path / "data" / "jump").mkdir()
    clips = read_annotations(tmp_path / "data", data_root=tmp_path, split="train")
    assert clips == [
        Clip("data/run/a.avi", (1,), "train", "data/run/a.avi"),  # classes sorted: jump, run, walk
        Clip("data/run/b.mp4", (1,), "train", "data/run/b.mp4"),
        Clip("data/walk/c.mp4", (2,), "train", "data/walk/c.mp4"),
    ]
    clips = read_annotations(tmp_path / "data", data_root=tmp_path, classes=("walk", "run", "jump"))
    assert [c.labels for c in clips] == [(1,), (1,), (0,)]


def test_load_dataset_dir_reads_the_synth_layout(synth_dir):
    ds = load_dataset_dir(synth_dir)
    assert ds.classes == tuple((synth_dir / "classes.txt").read_text().split())
    assert len(ds.clips) == 48 and not ds.multi_label
    assert [c.split for c in ds.clips] == sorted(
        (c.split for c in ds.clips), key=["train", "val", "test"].index
    )
    assert all((synth_dir / c.path).is_file() for c in ds.clips)
    assert {c.split for c in ds.clips} == {"train", "val", "test"}


# ---- each kind of malformed input names file and line ------------------------------------------------------

A = '[\n {"path": "a.mp4", "label": ["walk"]},\n '  # a good first record; the bad one is on line 3
MALFORMED = [
    ("mmaction", "list.txt", "a.mp4 0\nb.mp4\n", 2, "no label"),
    ("mmaction", "list.txt", "a.mp4 0\n\nb.mp4 x\n", 3, "no label after 'b.mp4 x'"),
    ("mmaction", "list.txt", "a.mp4 -1\n", 1, "no label after 'a.mp4 -1': '-1' is not a class index"),
    ("mmaction", "list.txt", "a.mp4 1.0\n", 1, "no label after 'a.mp4 1.0': '1.0' is not a class index"),
    ("mmaction", "list.txt", "a.mp4 9999999999\n", 1, "'9999999999' is not a class index (0 to 999999999)"),
    ("mmaction", "list.txt", "a.mp4 0\nb.mp4 3\n", 2, "out of range"),
    ("mmaction", "list.txt", "a.mp4 0\n../../etc/passwd.mp4 1\n", 2, "escapes the data root"),
    ("mmaction", "list.txt", "/abs/a.mp4 0\n", 1, "absolute path"),
    ("mmaction", "list.txt", "a.mp4 0\nb.mp4 1\n./a.mp4 2\n", 3, "listed again with other labels"),
    ("mmaction", "list.txt", "a.mp4 1 1\n", 1, "single-label list; pass --multi-label"),
    ("mmaction", "list.txt", "demo.mp4 280 3\n", 1, "2 labels (280 3) in a single-label list"),
    ("tinyvirat", "t.json", A + '{"path": "b.mp4", "label": ["fly"]}\n]', 3,
     "unknown label 'fly'"),
    ("tinyvirat", "t.json", A + '{"path": "b.mp4", "label": []}\n]', 3,
     "empty label"),
    ("tinyvirat", "t.json", A + '{"label": ["run"]}\n]', 3, "'path'"),
    ("tinyvirat", "t.json", A + '{"path": "b.mp4"}\n]', 3, "'label'"),
    ("tinyvirat", "t.json", '[\n {"path": "a.mp4", "dim": "big", "label": ["run"]}\n]', 2, "'dim'"),
    ("tinyvirat", "t.json", A + '{"path": "b.mp4", "label": \n', 4,
     "invalid JSON"),  # the parser notices at the end of the file
    ("tinyvirat", "t.json", '[\n {"path": "a.mp4", "label": ["walk"]}, "b\\"[{,.mp4",\n [1, 2]\n]', 2,
     "record 1: expected an object, got str"),
    ("tinyvirat", "t.json", '{"tubes": [\n {"path": "a.mp4", "label": ["walk"]},\n {"path": 3}]}', 3,
     "'path'"),
    ("csv", "a.csv", "file,label\nx.mp4,run\n", 1, "header"),
    ("csv", "a.csv", "path,label\nx.mp4,run\ny.mp4,run,extra\n", 3, "expected 2 fields"),
    ("csv", "a.csv", "path,label\nx.mp4,run\ny.mp4,swim\n", 3, "unknown label 'swim'"),
    ("csv", "a.csv", "path,label\nx.mp4,run\ny.mp4,\n", 3, "empty label"),
    ("csv", "a.csv", "path,label\nx.mp4,run;\n", 2, "empty label"),
    ("csv", "a.csv", "path,label,split\nx.mp4,run,\n", 2, "empty split"),
    ("csv", "a.csv", "path,label\nx.mp4,run\n..,run\n", 3, "escapes the data root"),
]  # fmt: skip


@pytest.mark.parametrize("fmt,name,text,line,message", MALFORMED)
def test_malformed_input_names_file_and_line(tmp_path, fmt, name, text, line, message):
    f = write(tmp_path / name, text)
    with pytest.raises(AnnotationError) as info:
        read_annotations(f, fmt, data_root=tmp_path, classes=CLASSES)
    msg = str(info.value)
    assert msg.startswith(f"{f}:{line}: " if line else f"{f}: "), msg
    assert message in msg


def test_names_without_class_list_are_the_sorted_union(tmp_path):
    f = write(tmp_path / "a.csv", "path,label\nx.mp4,run\ny.mp4,jump\n")
    assert [c.labels for c in read_annotations(f, data_root=tmp_path)] == [(1,), (0,)]


def test_folder_errors(tmp_path):
    write(tmp_path / "d" / "swim" / "a.mp4", "")
    with pytest.raises(AnnotationError, match=r"d/swim: unknown label 'swim'"):
        read_annotations(tmp_path / "d", data_root=tmp_path, classes=CLASSES)
    (tmp_path / "e").mkdir()
    with pytest.raises(AnnotationError, match=r"e: no class folders"):
        read_annotations(tmp_path / "e", data_root=tmp_path)
    with pytest.raises(AnnotationError, match="not inside the data root"):
        read_annotations(tmp_path / "d", data_root=tmp_path / "e")


def test_other_file_errors(tmp_path):
    with pytest.raises(AnnotationError, match="missing.txt: annotation file not found"):
        read_annotations(tmp_path / "missing.txt", data_root=tmp_path)
    with pytest.raises(AnnotationError, match="cannot tell the format"):
        read_annotations(write(tmp_path / "a.yaml", ""), data_root=tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"a.mp4 0\nb\xff.mp4 1\n")
    with pytest.raises(AnnotationError, match=r"bad\.txt:2: not UTF-8"):
        read_annotations(tmp_path / "bad.txt", data_root=tmp_path)
    with pytest.raises(AnnotationError, match=r"classes\.txt:2: blank line"):
        read_classes(write(tmp_path / "classes.txt", "a\n\nb\n"))
    with pytest.raises(AnnotationError, match=r"cm\.json: class indices must be 0\.\.1"):
        read_classes(write(tmp_path / "cm.json", '{"a": 0, "b": 2}'))


# ---- property: arbitrary input raises nothing but AnnotationError -----------------------------------------

TOKENS = st.sampled_from(
    ["a.mp4", "0", "1", "7", "-1", "run", "..", "/x", ";", ",", '"', "[", "{", "\t", " ", "\n"]
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(["id", "path", "dim", "label", "x"]), kids)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def hyp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hypothesis")


def _check_only_annotation_errors(root: Path, data: bytes) -> None:
    (root / "classInd.txt").write_text("1 a\n2 b\n")
    formats = [("mmaction", "a.txt"), ("tinyvirat", "a.json"), ("csv", "a.csv"), ("ssv2", "b.json")]
    formats += [("ucf101", "trainlist01.txt"), ("hmdb51", "x_test_split1.txt")]
    for fmt, name in formats:
        f = root / name
        f.write_bytes(data)
        for classes in (None, CLASSES):
            try:
                clips = read_annotations(f, fmt, data_root=root, classes=classes)
            except AnnotationError:
                continue
            assert all(isinstance(c, Clip) and not c.path.startswith(("/", "../")) for c in clips)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "replace"))))
def test_parsers_raise_only_annotation_error_on_arbitrary_bytes(hyp_dir, data):
    _check_only_annotation_errors(hyp_dir, data)


@settings(max_examples=150, deadline=None)
@given(st.lists(TOKENS, max_size=40).map("".join))
def test_parsers_raise_only_annotation_error_on_token_soup(hyp_dir, text):
    _check_only_annotation_errors(hyp_dir, text.encode())


@settings(max_examples=150, deadline=None)
@given(JSONISH | st.lists(JSONISH, max_size=5))
def test_parsers_raise_only_annotation_error_on_arbitrary_json(hyp_dir, value):
    _check_only_annotation_errors(hyp_dir, json.dumps(value).encode())


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=string.printable, max_size=80))
def test_classes_reader_raises_only_annotation_error(hyp_dir, text):
    for name in ("classes.txt", "class_map.json"):
        f = hyp_dir / name
        f.write_text(text)
        try:
            read_classes(f)
        except AnnotationError:
            pass
