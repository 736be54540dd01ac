"""Reasoning traces in the engines: the ``<think>`` split, and the OpenAI-compatible engine's
reading of a server's separate trace field.

The live vLLM server is tested in ``test_vllm_reasoning.py`` (its ``olmo3`` parser, the one
that runs on SmolLM2's tokenizer). The shapes that server cannot give are tested here on
**recorded server responses**, clearly not a live server: the older ``reasoning_content`` field
(vLLM before 0.32, DeepSeek's API) and OpenAI's reported ``reasoning_tokens`` (vLLM reports 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyllm.backends.reasoning import share_of_tokens, split_reasoning, split_response
from lazyllm.core.protocols import Message, Request, Response, SamplingParams


@pytest.mark.parametrize("text, answer, trace", [
    ("<think>a b</think> c", "c", "a b"),
    ("  <think>\na b\n</think>\n\nc d", "c d", "a b"),
    ("a b</think>c", "c", "a b"),  # the chat template opened the trace in the prompt
    ("<think>a b", "", "a b"),  # cut by max_tokens inside the trace
    ("no trace", "no trace", None),
    ("c <think>a</think> d", "c <think>a</think> d", None),  # not at the start: not a trace
])
def test_split_reasoning(text, answer, trace):
    assert split_reasoning(text) == (answer, trace)


def test_split_response_counts_trace_tokens_and_leaves_constrained_answers_alone():
    r = Response(text="<think>a b c</think> d", output_tokens=8)
    words = split_response(r, count=lambda t: len(t.split()))
    assert (words.text, words.reasoning, words.reasoning_tokens) == ("d", "a b c", 3)
    estimated = split_response(r)
    assert estimated.reasoning_tokens == share_of_tokens(8, "a b c", "d") == 7
    constrained = Request(messages=(Message("user", "x"),), choices=("<think>a b c</think> d",))
    assert split_response(r, constrained) is r
    assert split_response(Response.failed("boom")).reasoning is None


openai_api = pytest.importorskip("openai") and pytest.importorskip("lazyllm.backends.openai_api")


def _recorded(message: dict, usage: dict, finish: str = "stop"):
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate({
        "id": "chatcmpl-recorded", "object": "chat.completion", "created": 0, "model": "r1",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage,
    })


def _engine(tmp_path: Path):
    from lazyllm.models import OpenAI

    return openai_api.OpenAIEngine(OpenAI("r1", base_url="http://127.0.0.1:9/v1"), workspace=tmp_path)


ASK = Request(messages=(Message("user", "2+2?"),), params=SamplingParams(max_tokens=64))


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_openai_engine_reads_the_servers_trace_field(tmp_path, field):
    """Recorded shape of ``vllm serve --reasoning-parser deepseek_r1`` (``reasoning``, vLLM 0.32;
    ``reasoning_content`` before): no reported trace-token count, so it is estimated."""
    result = _recorded({"content": "4", field: "Two plus two is four."},
                       {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22})
    r = _engine(tmp_path)._parse(ASK, result, "chat", None)
    assert (r.text, r.reasoning, r.output_tokens) == ("4", "Two plus two is four.", 12)
    assert r.reasoning_tokens == share_of_tokens(12, "Two plus two is four.", "4")


def test_openai_engine_takes_the_reported_reasoning_token_count(tmp_path):
    """Recorded shape of OpenAI's usage for reasoning models (``completion_tokens_details``)."""
    result = _recorded({"content": "4", "reasoning_content": "Two plus two."},
                       {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50,
                        "completion_tokens_details": {"reasoning_tokens": 37}})
    r = _engine(tmp_path)._parse(ASK, result, "chat", None)
    assert (r.text, r.reasoning_tokens) == ("4", 37)


def test_openai_engine_splits_an_inline_trace_and_a_trace_cut_by_max_tokens(tmp_path):
    engine = _engine(tmp_path)
    inline = _recorded({"content": "<think>Two plus two.</think>\n\n4"},
                       {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19})
    r = engine._parse(ASK, inline, "chat", None)
    assert (r.text, r.reasoning) == ("4", "Two plus two.")
    cut = _recorded({"content": None, "reasoning": "Two plus"},
                    {"prompt_tokens": 10, "completion_tokens": 64, "total_tokens": 74}, finish="length")
    r = engine._parse(ASK, cut, "chat", None)
    assert (r.text, r.reasoning, r.finish_reason, r.error) == ("", "Two plus", "length", None)


def test_vllm_worker_answers_are_split_like_the_other_engines():
    from lazyllm.backends.vllm_engine import _response

    raw = {"text": "<think>Two plus two.</think> 4", "input_tokens": 7, "output_tokens": 12, "finish_reason": "stop"}
    r = _response(ASK, raw)
    assert (r.text, r.reasoning, r.reasoning_tokens) == ("4", "Two plus two.", share_of_tokens(12, "Two plus two.", "4"))
    constrained = Request(messages=ASK.messages, choices=("4", "5"))
    assert _response(constrained, {**raw, "text": "4"}).reasoning is None
