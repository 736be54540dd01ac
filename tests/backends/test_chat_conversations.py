"""Conversations and reasoning traces on the real embedded model (SmolLM2-135M-Instruct, CPU,
transformers engine): the model's chat template is applied to every turn of a conversation, as
for a single prompt; a ``<think>`` trace in generated tokens is split with the real tokenizer.

SmolLM2 does not write trace tags on its own, so the trace test hands the engine's answer step
generated token ids that hold one (the tokenizer's ids of a trace and an answer): the parsing
and token counting are real, the trace text is not the model's.
"""

from __future__ import annotations

import pytest
from engine_helpers import run

import lazyllm
from lazyllm.backends.transformers import TransformersEngine, _Prepared, resolve_model_dir
from lazyllm.core.catalog import DEFAULT_MODEL
from lazyllm.core.protocols import Message, Request, SamplingParams
from lazyllm.models import Transformers

pytestmark = pytest.mark.model

DIALOGUE = [{"role": "user", "content": "My name is Ada and I live in Paris."},
            {"role": "assistant", "content": "Nice to meet you, Ada!"},
            {"role": "user", "content": "What is my name?"}]


@pytest.fixture(scope="module")
def tokenizer(model_workspace):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(Transformers(DEFAULT_MODEL), model_workspace.path))


def test_a_conversation_goes_through_the_chat_template_turn_by_turn(model_workspace, tokenizer):
    frame = lazyllm.from_dicts([{"conv": DIALOGUE}])
    out = (frame.generate("reply", Transformers(), messages="conv", system="You are a helpful assistant.",
                          max_tokens=16, append_to="conv2")
           .collect(workspace=model_workspace, progress=False))
    alone = (lazyllm.from_dicts([{"q": DIALOGUE[-1]["content"]}])
             .generate("reply", Transformers(), prompt="{{ q }}", system="You are a helpful assistant.", max_tokens=16)
             .collect(workspace=model_workspace, progress=False))
    assert out["reply_error"][0] is None and out["reply"][0] != alone["reply"][0]  # the earlier turns count
    assert [m["role"] for m in out["conv2"][0]] == ["user", "assistant", "user", "assistant"]
    # the same request as the engine saw it: its prompt tokens are the chat template's over every turn
    messages = [{"role": "system", "content": "You are a helpful assistant."}] + DIALOGUE
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert all(m["content"] in text for m in messages)
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    with TransformersEngine(Transformers(), workspace=model_workspace.path) as engine:
        request = Request(messages=tuple(Message(m["role"], m["content"]) for m in messages),
                          params=SamplingParams(max_tokens=16))
        response = run(engine, [request])[0]
        assert response.input_tokens == expected
        assert response.text == out["reply"][0]  # the frame sent exactly this conversation

        # a trace in generated ids: split, its tokens counted with the tokenizer
        trace = tokenizer.encode("<think>Two plus two is four.</think>", add_special_tokens=False)
        answer = tokenizer.encode(" 4", add_special_tokens=False)
        eos = tokenizer.eos_token_id
        r = engine._response(_Prepared(index=0, request=request, ids=[0] * 5), trace + answer + [eos])
        assert (r.text, r.reasoning) == ("4", "Two plus two is four.")
        assert (r.reasoning_tokens, r.output_tokens) == (len(trace), len(trace) + len(answer) + 1)
