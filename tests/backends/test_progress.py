"""Training progress in logs: a plain line per interval with step/total, loss and s/step."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from lazyllm.backends.progress import progress_interval, training_progress_callback
from lazyllm.errors import PlanError

pytest.importorskip("transformers")


def test_training_progress_lines_carry_step_loss_and_seconds_per_step():
    out = io.StringIO()
    callback = training_progress_callback("sft", interval=0, stream=out)
    state = SimpleNamespace(global_step=0, max_steps=4)
    callback.on_train_begin(None, state, None)
    for step in range(1, 5):
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 3.0 - step / 2})
        callback.on_step_end(None, state, None)
    callback.on_train_end(None, state, None)
    lines = out.getvalue().splitlines()
    assert lines[0] == "lazyllm train sft: step 0/4"
    assert lines[1].startswith("lazyllm train sft: step 1/4 · loss 2.500 · ") and "s/step · ETA" in lines[1]
    assert lines[-1].startswith("lazyllm train sft: step 4/4 · loss 1.000") and lines[-1].endswith("· done")


def test_a_resumed_training_counts_seconds_per_step_from_where_it_resumed():
    out = io.StringIO()
    callback = training_progress_callback("dpo", interval=3600, stream=out)
    state = SimpleNamespace(global_step=6, max_steps=10)
    callback.on_train_begin(None, state, None)
    state.global_step = 10
    callback.on_step_end(None, state, None)  # within the interval: no line
    callback.on_train_end(None, state, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("lazyllm train dpo: step 10/10 · ") and "s/step · done" in lines[1]


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAZYLLM_PROGRESS_INTERVAL", "2.5")
    assert progress_interval() == 2.5
    monkeypatch.setenv("LAZYLLM_PROGRESS_INTERVAL", "often")
    with pytest.raises(PlanError, match="LAZYLLM_PROGRESS_INTERVAL"):
        progress_interval()
