"""Frame.train(): lazy handles, trained on first use, cached, usable as a model."""

from __future__ import annotations

import pytest

import lazyllm
from lazyllm.errors import ColumnNotFoundError, PlanError
from lazyllm.planner.train import TrainedModel, is_trained

FACTS = [
    {"question": "What is the capital of Zorbania?", "answer": "Blimpton."},
    {"question": "Who founded Zorbania?", "answer": "Queen Mirelda."},
    {"question": "What is Zorbania's currency?", "answer": "The zorb."},
    {"question": "What is the national fruit of Zorbania?", "answer": "The blue fig."},
]


def test_train_is_lazy_and_checks_columns_first(ws, counters):
    frame = lazyllm.from_dicts(FACTS)
    handle = frame.train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question", response="answer"))
    assert isinstance(handle, TrainedModel) and not is_trained(handle, ws.path)
    with pytest.raises(ColumnNotFoundError, match="'chosen'"):
        frame.train(lazyllm.DPO(base="smollm2-135m-instruct"))
    with pytest.raises(PlanError, match="training spec"):
        frame.train("sft")
    # the fingerprint covers data, spec and base; performance settings do not count
    other = lazyllm.from_dicts(FACTS[:2]).train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question",
                                                             response="answer"))
    assert other.fingerprint != handle.fingerprint
    same = frame.train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question", response="answer",
                                   save_steps=7))
    assert same.fingerprint == handle.fingerprint
    text = lazyllm.from_dicts(FACTS).generate("a", handle, prompt="{{ question }}").explain(workspace=ws)
    assert "SFT of transformers:smollm2-135m-instruct" in text and counters.CALLS == 0


@pytest.mark.model
def test_trained_adapter_changes_generations_and_is_not_retrained(model_workspace, monkeypatch):
    monkeypatch.setenv("LAZYLLM_NUM_THREADS", "2")
    base = lazyllm.Transformers(batch_size=8)
    spec = lazyllm.SFT(base=base, prompt="question", response="answer", lora=lazyllm.LoRA(r=8, alpha=16),
                       max_steps=12, batch_size=4, learning_rate=2e-3, max_length=64, seed=0)
    tuned = lazyllm.from_dicts(FACTS).train(spec)
    questions = lazyllm.from_dicts([{"question": FACTS[0]["question"]}])
    before = questions.generate("a", base, prompt="{{ question }}", max_tokens=12).collect(
        workspace=model_workspace, progress=False)["a"][0]
    after = questions.generate("a", tuned, prompt="{{ question }}", max_tokens=12).collect(
        workspace=model_workspace, progress=False)["a"][0]
    assert is_trained(tuned, model_workspace.path)
    assert after != before
    assert "Blimpton" in after

    from lazyllm.backends import trainers

    def no_training(job):
        raise AssertionError("a trained model must be served from its cache")

    monkeypatch.setattr(trainers, "train", no_training)
    metrics = tuned.fit(workspace=model_workspace, progress=False)  # cached: no training call
    assert metrics["steps"] == 12
    again = questions.generate("a", tuned, prompt="{{ question }}", max_tokens=16).collect(
        workspace=model_workspace, progress=False)["a"][0]
    assert again.startswith(after[:5])
