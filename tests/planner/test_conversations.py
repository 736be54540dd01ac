"""Conversations as input, with the deterministic engine: ``generate(messages=...)`` sends the
whole conversation (after a system template, before a final user turn), keys the cache on it,
appends the answer (``append_to``) for the next turn; the planner knows the node reads the
column; null or empty conversations are null inputs; bad ones fail before any call."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.backends import testing
from lazyllm.core.errors import ColumnNotFoundError, ParameterError, PlanError
from lazyllm.planner.optimizer import optimize

MODEL = lazyllm.TestModel(rules=(("weather", "Sunny."), ("France", "Paris.")))


def chats():
    return lazyllm.from_dicts([
        {"id": 0, "conv": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "Capital of France?"}]},
        {"id": 1, "conv": [{"role": "user", "content": "How is the weather?"}]},
        {"id": 2, "conv": []},
        {"id": 3, "conv": None},
    ])


def test_the_whole_conversation_is_sent_with_system_and_final_turn(ws, counters, monkeypatch):
    seen: list[tuple[tuple[str, str], ...]] = []
    respond = testing.DeterministicEngine.respond

    def spy(self, request):
        seen.append(tuple((m.role, m.content) for m in request.messages))
        return respond(self, request)

    monkeypatch.setattr(testing.DeterministicEngine, "respond", spy)
    df = chats().head(2).generate("reply", MODEL, messages="conv", system="Be brief, {{ id }}.",
                                  prompt="Answer in one word.").collect(workspace=ws)
    assert sorted(seen) == sorted([
        (("system", "Be brief, 0."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?"),
         ("user", "Answer in one word.")),
        (("system", "Be brief, 1."), ("user", "How is the weather?"), ("user", "Answer in one word.")),
    ])
    assert df["reply"].to_list() == ["Paris.", "Sunny."]


def test_append_to_chains_turns_into_a_dialogue(ws, counters):
    out = (chats().head(2)
           .generate("r1", MODEL, messages="conv", system="Be brief.", append_to="conv2")
           .generate("r2", MODEL, messages="conv2", prompt="And tomorrow?", append_to="conv3")
           .collect(workspace=ws))
    assert out.schema["conv2"] == out.schema["conv3"] == pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    conv3 = out["conv3"][1].to_list()
    assert conv3 == [{"role": "user", "content": "How is the weather?"}, {"role": "assistant", "content": "Sunny."},
                     {"role": "user", "content": "And tomorrow?"}, {"role": "assistant", "content": "Sunny."}]
    assert out["conv2"][0].to_list()[-1] == {"role": "assistant", "content": "Paris."}  # no system message in it
    assert counters.CALLS == 4


def test_a_first_turn_from_a_prompt_starts_a_conversation(ws, counters):
    out = (lazyllm.from_dicts([{"q": "Capital of France?"}])
           .generate("a", MODEL, prompt="{{ q }}", append_to="conv").collect(workspace=ws))
    assert out["conv"][0].to_list() == [{"role": "user", "content": "Capital of France?"},
                                        {"role": "assistant", "content": "Paris."}]


def test_the_conversation_is_part_of_the_cache_key(ws, counters):
    base = [{"role": "user", "content": "Capital of France?"}]
    one = lazyllm.from_dicts([{"conv": base}])
    two = lazyllm.from_dicts([{"conv": [{"role": "assistant", "content": "Hi"}] + base}])
    one.generate("a", MODEL, messages="conv").collect(workspace=ws)
    one.generate("a", MODEL, messages="conv").collect(workspace=ws)
    assert counters.CALLS == 1  # the same conversation: served from the cache
    two.generate("a", MODEL, messages="conv").collect(workspace=ws)
    assert counters.CALLS == 2  # the last turn is the same, the conversation is not


def test_null_or_empty_conversations_are_not_sent_and_name_the_column(ws, counters):
    df = chats().generate("reply", MODEL, messages="conv", append_to="conv2").collect(workspace=ws)
    assert counters.CALLS == 2
    for r in (2, 3):
        assert df["reply"][r] is None and df["conv2"][r] is None
        assert df["reply_error"][r].startswith("conversation column 'conv' null or empty, so no request was sent")


def test_the_planner_knows_the_node_reads_the_conversation_column():
    frame = chats().with_columns(extra=pl.lit(1)).generate("reply", MODEL, messages="conv")
    assert frame.plan.columns_read() == {"conv"}
    # projection pruning: the first node is kept while the second reads the conversation it appends to
    two = frame.generate("r1", MODEL, messages="conv", append_to="conv2").generate("r2", MODEL, messages="conv2")
    kept = optimize(two.select("r2").plan).plan.child
    assert kept.column == "r2" and kept.child.column == "r1"
    assert optimize(two.select("r1").plan).plan.child.column == "r1"  # r2 and reply pruned
    pushed = optimize(frame.filter(pl.col("conv").list.len() > 1).plan).plan
    assert pushed.kind == "Generate" and pushed.child.kind == "Filter"  # pushdown below the LLM node
    appended = frame.generate("r2", MODEL, messages="conv", append_to="conv2").filter(pl.col("conv2").is_not_null())
    spine = [optimize(appended.plan).plan]
    while spine[-1].children:
        spine.append(spine[-1].children[0])
    below = next(n.child for n in spine if n.kind == "Filter")
    assert below.kind == "Generate" and below.column == "r2"  # reads what r2 writes: stays above it


def test_bad_conversation_columns_fail_before_any_model_loads(ws, counters):
    with pytest.raises(PlanError, match="not a conversation"):
        lazyllm.from_dicts([{"conv": "hello"}]).generate("a", MODEL, messages="conv")
    with pytest.raises(PlanError, match="not a conversation"):
        lazyllm.from_dicts([{"conv": [{"speaker": "user", "text": "hi"}]}]).generate("a", MODEL, messages="conv")
    with pytest.raises(ColumnNotFoundError):
        chats().generate("a", MODEL, messages="chat")
    with pytest.raises(ParameterError, match="prompt"):
        chats().generate("a", MODEL)
    with pytest.raises(PlanError, match="n=1"):
        chats().generate("a", MODEL, messages="conv", append_to="c2", n=2)
    bad = lazyllm.from_dicts([{"conv": [{"role": "user", "content": "hi"}]},
                              {"conv": [{"role": "robot", "content": "beep"}]}]).generate("a", MODEL, messages="conv")
    with pytest.raises(PlanError, match=r"row 1 .*robot"):
        bad.collect(workspace=ws)
    with pytest.raises(PlanError, match="robot"):
        bad.explain(workspace=ws)
    null_content = lazyllm.from_dicts([{"conv": [{"role": "user", "content": None}]}],
                                      schema={"conv": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))})
    with pytest.raises(PlanError, match="content is null"):
        null_content.generate("a", MODEL, messages="conv").collect(workspace=ws)
    assert counters.CALLS == 0


def test_defaults_keep_fingerprints_and_explain_shows_the_conversation():
    node = chats().generate("a", MODEL, prompt="{{ id }}").plan
    assert not {"conversation", "append_to", "reasoning"} & set(node.fingerprint_params())
    text = chats().generate("a", MODEL, messages="conv", append_to="c2").explain(fingerprints=False)
    assert "messages=conv · append_to=c2" in text
