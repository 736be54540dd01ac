"""The self-rewarding example: two rounds of generate -> judge -> DPO as one lazy program."""

from __future__ import annotations

import pytest

from lazyllm.examples import self_rewarding
from lazyllm.planner.train import TrainedModel, is_trained

pytestmark = pytest.mark.model


def test_two_rounds_train_on_their_own_judgements(model_workspace, monkeypatch):
    monkeypatch.setenv("LAZYLLM_NUM_THREADS", "2")
    job = self_rewarding.build(2, swap=False, tokens=16, steps=2, prompts=self_rewarding.PROMPTS[:4])
    final = job["final_model"]
    assert isinstance(final, TrainedModel) and isinstance(final.spec.base, TrainedModel)  # round 2 on round 1
    assert not is_trained(final, model_workspace.path)  # nothing ran yet
    import lazyllm

    names = ["pairs_round_1", "pairs_round_2", "final_answers"]
    results = dict(zip(names, lazyllm.collect_all([job[n] for n in names], workspace=model_workspace,
                                                   progress=False)))
    assert results["pairs_round_1"].height > 0 and results["pairs_round_2"].height > 0
    assert is_trained(final.spec.base, model_workspace.path) and is_trained(final, model_workspace.path)
    answers = results["final_answers"]
    assert answers["final_answer_error"].is_null().all() and (answers["final_answer"].str.len_chars() > 0).all()
