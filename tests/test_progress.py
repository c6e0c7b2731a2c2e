"""Progress that tells the truth: counts of written clips (decode and forward run ahead, shown beside),
rate and ETA from written clips, plain lines every --log-every seconds when stderr is not a terminal."""

from __future__ import annotations

import dataclasses
import io
import re

from conftest import FakeBackbone

from stecache.extract import ExtractConfig, extract
from stecache.progress import Progress

LINE = re.compile(
    r"extract: (\d+)/(\d+) clips written \(\d+%\), [\d.]+ clip/s, ETA \S+; computed (\d+), decoded (\d+)"
)


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(10, log_every=3600, stream=out)
    assert not p.tty
    p.add(decoded=4, computed=2)
    p.refresh()
    assert out.getvalue() == ""  # not yet log_every seconds
    p.add(written=2)
    p.close()
    (line,) = out.getvalue().splitlines()
    assert LINE.match(line).groups() == ("2", "10", "2", "4")
    assert Progress(5, enabled=False, stream=out).line()  # disabled: renders nothing, still usable


def test_extract_progress_counts_written_clips(synth_dir, capsys, tmp_path):
    from stecache.annotations import load_dataset_dir

    ds = load_dataset_dir(synth_dir)
    ds = dataclasses.replace(ds, clips=ds.clips[:10])
    cfg = ExtractConfig(shard_size=4, batch_size=2, workers=0, progress=True, log_every=1e-9)
    extract(ds, tmp_path / "c.zarr", FakeBackbone(), cfg=cfg)
    lines = [m.groups() for m in map(LINE.match, capsys.readouterr().err.splitlines()) if m]
    assert len(lines) >= 10
    for written, total, computed, decoded in lines:
        w, t, c, d = int(written), int(total), int(computed), int(decoded)
        assert t == 10 and w <= c <= d <= 10
        assert w in (0, 4, 8, 10)  # whole shards of 4 (the last has 2): written means stored
    assert lines[-1][:1] == ("10",)
    assert any(int(d) > int(w) for w, _, _, d in lines)  # decoding ran ahead and was shown apart
