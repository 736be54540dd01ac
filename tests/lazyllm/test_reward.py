"""Frame.reward(): sequence-classification reward models as scorers."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.errors import ColumnNotFoundError, PlanError

PAIRS = [
    {"q": "What is the capital of France?", "good": "The capital of France is Paris.", "bad": "I do not know."},
    {"q": "What is 2 + 2?", "good": "2 + 2 equals 4.", "bad": "I do not know."},
    {"q": "What color is the sky on a clear day?", "good": "The sky is blue on a clear day.", "bad": "I do not know."},
    {"q": "How many legs does a spider have?", "good": "A spider has eight legs.", "bad": "I do not know."},
    {"q": "What is the boiling point of water at sea level?", "good": "Water boils at 100 degrees Celsius.",
     "bad": "I do not know."},
    {"q": "Which planet is closest to the Sun?", "good": "Mercury is the closest planet to the Sun.",
     "bad": "I do not know."},
]


def test_reward_scores_are_cached_fingerprinted_and_explained(ws, counters):
    rm = lazyllm.TestModel(name="rm", rewards=(("Paris", 2.0), ("equals 4", 1.0)))
    frame = lazyllm.from_dicts(PAIRS[:2]).reward("r", rm, question="q", response="good")
    assert frame.schema["r"] == pl.Float64
    assert "REWARD r ← test:rm" in frame.explain(workspace=ws) and counters.CALLS == 0
    df = frame.collect(workspace=ws, progress=False)
    assert df["r"].to_list() == [2.0, 1.0] and df["r_error"].is_null().all() and counters.CALLS == 2
    again = lazyllm.from_dicts(PAIRS[:2]).reward("r", rm, question="q", response="good").collect(workspace=ws)
    assert again.equals(df) and counters.CALLS == 2  # served from the cache
    other = lazyllm.from_dicts(PAIRS[:2]).reward("r", rm, question="q", response="bad")
    assert other.fingerprint != frame.fingerprint


def test_reward_checks_its_inputs_before_any_call(counters):
    frame = lazyllm.from_dicts(PAIRS)
    with pytest.raises(ColumnNotFoundError):
        frame.reward("r", lazyllm.TestModel(), question="q", response="missing")
    with pytest.raises(PlanError, match="question"):
        frame.reward("r", lazyllm.TestModel(), response="good")
    with pytest.raises(PlanError, match="transformers engine"):
        frame.reward("r", lazyllm.OpenAI("gpt-4o-mini"), question="q", response="good")
    sft = frame.train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="q", response="good"))
    with pytest.raises(PlanError, match="trained with SFT"):
        frame.reward("r", sft, question="q", response="good")
    assert counters.CALLS == 0


@pytest.mark.model
def test_a_trained_reward_model_scores_chosen_above_rejected(model_workspace, monkeypatch):
    """RewardModel trained for a few steps through Frame.train, then used downstream by reward():
    the chosen answers of its training pairs score above the rejected ones on average."""
    monkeypatch.setenv("LAZYLLM_NUM_THREADS", "2")
    pairs = lazyllm.from_dicts(PAIRS)
    rm = pairs.train(lazyllm.RewardModel(base=lazyllm.Transformers(batch_size=8), prompt="q", chosen="good",
                                         rejected="bad", lora=lazyllm.LoRA(r=8, alpha=16), max_steps=12,
                                         batch_size=2, learning_rate=2e-3, max_length=96, seed=0))
    scored = (pairs.reward("r_good", rm, question="q", response="good")
              .reward("r_bad", rm, question="q", response="bad")
              .collect(workspace=model_workspace, progress=False))
    assert scored["r_good_error"].is_null().all() and scored["r_bad_error"].is_null().all()
    assert scored["r_good"].mean() > scored["r_bad"].mean()
    assert (scored["r_good"] > scored["r_bad"]).sum() >= 4


def test_a_reward_onto_an_existing_column_needs_overwrite(ws, counters):
    rm = lazyllm.TestModel(name="rm", rewards=(("Paris", 2.0),))
    frame = lazyllm.from_dicts(PAIRS[:1])
    with pytest.raises(PlanError, match="'good'.*overwrite=True"):
        frame.reward("good", rm, question="q", response="good")
    df = frame.reward("good", rm, question="q", response="good", overwrite=True).collect(workspace=ws,
                                                                                          progress=False)
    assert df["good"].to_list() == [2.0] and counters.CALLS == 1
