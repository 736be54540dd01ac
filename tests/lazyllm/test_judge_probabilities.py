"""Probability-weighted judges (G-Eval) and calibrated pairwise verdicts, on the deterministic engine."""

from __future__ import annotations

import math

import polars as pl
import pytest

import lazyllm
from lazyllm.backends.logprobs import choice_logprobs, normalize, prefix_paths
from lazyllm.core.protocols import Request, Response
from lazyllm.errors import PlanError

ROWS = [{"q": "What is 2+2?", "good": "It is 4.", "bad": "It is 5."},
        {"q": "Capital of France?", "good": "Paris.", "bad": "Lyon."}]


def frame():
    return lazyllm.from_dicts(ROWS)


# -- expected scores ---------------------------------------------------------------------


def test_scripted_distribution_gives_the_exact_expected_score(ws, counters):
    judge = lazyllm.TestModel(name="g", distributions=(
        ("It is 4.", (("7", 0.25), ("8", 0.5), ("9", 0.25))),
        ("Paris.", (("1", 0.1), ("10", 0.9))),
    ))
    df = frame().judge("score", judge, question="q", answer="good", method="expected").collect(workspace=ws)
    assert df.schema["score"] == pl.Float64 and df.schema["score_probs"] == pl.List(pl.Float64)
    assert df["score"].to_list() == pytest.approx([8.0, 0.1 * 1 + 0.9 * 10])
    probs = df["score_probs"].to_list()
    assert probs[0] == pytest.approx([0, 0, 0, 0, 0, 0, 0.25, 0.5, 0.25, 0])
    assert probs[1][0] == pytest.approx(0.1) and probs[1][9] == pytest.approx(0.9)
    assert df["score_error"].is_null().all() and counters.CALLS == 2  # one call per row


def test_expected_score_is_cached_with_its_distribution(ws, counters):
    judge = lazyllm.TestModel(name="g", distributions=(("", (("3", 0.5), ("5", 0.5))),))
    f = frame().judge("score", judge, question="q", answer="good", method="expected", scale=(1, 5))
    first = f.collect(workspace=ws)
    counters.reset_counters()
    again = f.collect(workspace=ws)
    assert counters.CALLS == 0 and again.equals(first) and first["score"].to_list() == [4.0, 4.0]


def test_argmax_and_expected_are_different_requests(ws, counters):
    judge = lazyllm.TestModel(name="g", distributions=(("", (("9", 0.6), ("1", 0.4))),))
    argmax = frame().judge("score", judge, question="q", answer="good").collect(workspace=ws)
    expected = frame().judge("score", judge, question="q", answer="good", method="expected").collect(workspace=ws)
    assert argmax["score"].to_list() == [9, 9] and expected["score"].to_list() == pytest.approx([5.8, 5.8])
    assert counters.CALLS == 4


def test_engine_without_probabilities_gives_a_row_error(ws, counters):
    chatty = lazyllm.TestModel(name="chatty")  # echoes, no distribution
    df = frame().judge("score", chatty, question="q", answer="good", method="expected").collect(workspace=ws)
    assert df["score"].null_count() == 2 and all("no distribution" in e for e in df["score_error"])


def test_bad_methods_fail_when_the_plan_is_built(counters):
    with pytest.raises(PlanError, match="choose one of"):
        frame().judge("s", lazyllm.TestModel(), question="q", answer="good", method="mean")
    with pytest.raises(PlanError, match="rationale"):
        frame().judge("s", lazyllm.TestModel(), question="q", answer="good", method="expected", rationale=True)
    with pytest.raises(PlanError, match="choose one of"):
        frame().judge_pairwise("w", lazyllm.TestModel(), a="good", b="bad", question="q", method="vote")
    with pytest.raises(PlanError, match="tie_margin"):
        frame().judge_pairwise("w", lazyllm.TestModel(), a="good", b="bad", question="q", tie_margin=1.5)
    assert counters.CALLS == 0


# -- calibrated pairwise verdicts ----------------------------------------------------------


def _pair_judge(name, quality, bias):
    """P(prefers the answer shown first) = sigmoid(quality(first) - quality(second) + bias), no ties."""
    rules = []
    for first, q1 in quality.items():
        for second, q2 in quality.items():
            if first == second:
                continue
            p = 1 / (1 + math.exp(-(q1 - q2 + bias)))
            needle = f"[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]\n\n" \
                     f"[The Start of Assistant B's Answer]\n{second}\n"
            rules.append((needle, (("A", p), ("B", 1 - p))))
    return lazyllm.TestModel(name=name, distributions=tuple(rules))


QUALITY = {"It is 4.": 1.0, "It is 5.": -1.0, "Paris.": 0.3, "Lyon.": 0.0}


def test_position_biased_judge_gives_the_unbiased_verdict_when_calibrated(ws, counters):
    fair = _pair_judge("fair", QUALITY, bias=0.0)
    biased = _pair_judge("biased", QUALITY, bias=2.0)  # strongly prefers whatever is shown first
    fair_df = frame().judge_pairwise("w", fair, a="good", b="bad", question="q", tie_margin=0.05).collect(workspace=ws)
    biased_df = frame().judge_pairwise("w", biased, a="good", b="bad", question="q", tie_margin=0.05).collect(
        workspace=ws)
    assert fair_df["w"].to_list() == ["a", "a"]
    assert biased_df["w"].to_list() == fair_df["w"].to_list()
    # the bias shows in the raw letters (first position wins both orders) but not in the verdict
    assert biased_df["w_verdicts"].to_list() == [["A", "A"], ["A", "A"]]
    assert (biased_df["w_margin"] > 0).all() and (biased_df["w_margin"] <= 1).all()
    # strict mode keeps the old rule: inconsistent letters are ties
    strict = frame().judge_pairwise("w", biased, a="good", b="bad", question="q", method="strict").collect(workspace=ws)
    assert strict["w"].to_list() == ["tie", "tie"] and strict["w_margin"].to_list() == [0.0, 0.0]


def test_calibrated_margin_is_the_position_averaged_preference(ws, counters):
    biased = _pair_judge("biased", QUALITY, bias=2.0)
    df = frame().judge_pairwise("w", biased, a="good", b="bad", question="q").collect(workspace=ws)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for row, (good, bad) in zip(df.iter_rows(named=True), [("It is 4.", "It is 5."), ("Paris.", "Lyon.")]):
        d = QUALITY[good] - QUALITY[bad]
        p_a = (sig(d + 2) + (1 - sig(-d + 2))) / 2
        p_b = (1 - sig(d + 2) + sig(-d + 2)) / 2
        assert row["w_margin"] == pytest.approx(p_a - p_b)
    # the France pair differs by 0.3 logits only: a tie at the default margin of 0.1
    assert df["w"].to_list() == ["a", "tie"]
    swapped = frame().judge_pairwise("w", biased, a="bad", b="good", question="q").collect(workspace=ws)
    assert swapped["w_margin"].to_list() == pytest.approx([-m for m in df["w_margin"].to_list()])


# -- the log-probability helpers -----------------------------------------------------------


def test_longest_match_splits_shared_prefixes():
    choices = [(1,), (2,), (1, 0)]  # "1", "2", "10" on a digit-splitting tokenizer
    assert prefix_paths(choices) == [(1,)]
    table = {(): {1: 0.5, 2: 0.3}, (1,): {0: 0.4}}
    lps = choice_logprobs(choices, lambda p, t: math.log(table[p][t]) if t in table[p] else -math.inf)
    assert [math.exp(v) for v in lps] == pytest.approx([0.5 * 0.6, 0.3, 0.5 * 0.4])
    assert normalize([-math.inf, -math.inf]) is None


def test_logprobs_need_choices_and_change_the_cache_key_only_when_set():
    with pytest.raises(PlanError, match="needs choices"):
        Request(prompt="x", logprobs=True)
    plain = Request(prompt="x", choices=("a", "b"))
    assert "logprobs" not in plain.canonical()
    assert Request(prompt="x", choices=("a", "b"), logprobs=True).canonical()["logprobs"] is True
    r = Response(text="a", choice_logprobs=(0.0, -math.inf))
    assert Response.from_record(r.to_record()) == r
