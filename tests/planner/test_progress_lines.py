"""Progress in logs: when stderr is not a terminal, plain lines replace the progress bars."""

from __future__ import annotations

import io

import polars as pl
from rich.console import Console

import lazyllm
from lazyllm.planner.executor import _Bars


def test_a_collect_logged_to_a_file_prints_plain_progress_lines(ws, monkeypatch, capsys):
    monkeypatch.setenv("LAZYLLM_PROGRESS_INTERVAL", "0")
    model = lazyllm.TestModel(name="progress", batch_size=4)
    frame = lazyllm.from_polars(pl.DataFrame({"x": [str(i) for i in range(10)]})).generate(
        "y", model, prompt="echo {{ x }}")
    frame.collect(workspace=ws, progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("lazyllm generate 'y': ")]
    assert lines, err
    assert lines[-1].startswith("lazyllm generate 'y': 10/10 rows · 0 cached · ") and lines[-1].endswith(" · done")
    assert any("ETA" in ln for ln in lines[:-1]), lines  # 3 engine batches: lines before the end carry an ETA
    frame.collect(workspace=ws, progress=True)  # warm: everything from the cache
    warm = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lazyllm generate 'y': ")]
    assert warm == [warm[-1]] and "10/10 rows · 10 cached" in warm[-1]


def test_plain_lines_come_at_most_once_per_interval_and_once_at_the_end():
    out = io.StringIO()
    bars = _Bars(None, [], ["judge 'score'"], plain=Console(file=out, width=200), interval=3600)
    bars.refresh(0, done=0, total=8, hits=0, tokens=0)
    for done in range(1, 8):
        bars.refresh(0, done=done, total=8, hits=0, tokens=done * 4)
    assert out.getvalue() == ""  # the interval has not passed
    bars.refresh(0, done=8, total=8, hits=2, tokens=32)
    bars.refresh(0, done=8, total=8, hits=2, tokens=32)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazyllm judge 'score': 8/8 rows · 2 cached") and "done" in lines[0]


def test_progress_off_prints_nothing(ws, capsys):
    frame = lazyllm.from_polars(pl.DataFrame({"x": ["a", "b"]})).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
    frame.collect(workspace=ws, progress=False)
    assert "lazyllm generate" not in capsys.readouterr().err
