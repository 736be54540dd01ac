"""Constrained decoding (choices, JSON schema) in the transformers engine, with xgrammar.

The model tests run the real embedded model (SmolLM2-135M-Instruct, float32, CPU),
converted once per session in the shared ``model_workspace``.
"""

from __future__ import annotations

import doctest
import json
import sys

import jsonschema
import torch
import pytest
from engine_helpers import ask, run

from lazyllm.backends import constraints
from lazyllm.core.catalog import DEFAULT_MODEL
from lazyllm.backends.constraints import choices_grammar
from lazyllm.core.errors import LazyLLMError, MissingDependencyError
from lazyllm.core.protocols import Response
from lazyllm.backends.transformers import TransformersEngine, resolve_model_dir
from lazyllm.models import Transformers

RATING = tuple(str(k) for k in range(1, 11))
YES_NO = ("yes", "no")
QUOTED = ('He said "hi"', "plain")
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "neutral"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
PERSON_TEXT = json.dumps(PERSON, sort_keys=True, separators=(",", ":"))  # canonical, as the planner sends it
PERSON_PROMPT = "Describe a made-up person as JSON with a name, an age and a mood."
RATING_PROMPT = "Rate the movie Titanic from 1 to 10. Answer with a number only."
SKY_PROMPT = "Is the sky blue? Answer yes or no."
QUOTE_PROMPT = "Which one is a greeting?"
FRANCE = "What is the capital of France?"


def assert_person(response: Response) -> None:
    assert response.error is None and response.finish_reason == "stop", response
    jsonschema.validate(json.loads(response.text), PERSON)


@pytest.fixture(scope="session")
def engine(model_workspace):
    resolve_model_dir(Transformers(DEFAULT_MODEL), model_workspace.path)  # converted once per session
    eng = TransformersEngine(Transformers(DEFAULT_MODEL, dtype="float32", batch_size=8),
                             workspace=model_workspace.path)
    yield eng
    eng.close()


# --------------------------------------------------------------------------- no model needed


def test_choices_grammar_escapes_quotes_backslashes_and_control_characters():
    assert choices_grammar(["a", "b"]) == 'root ::= "a" | "b"'
    assert choices_grammar(['He said "hi"']) == r'root ::= "He said \"hi\""'
    assert choices_grammar(["a\\b", "x\ny\t", "é 日本"]) == r'root ::= "a\\b" | "x\x0ay\x09" | "é 日本"'
    with pytest.raises(ValueError, match="choices is empty"):
        choices_grammar([])
    result = doctest.testmod(constraints, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_processor_masks_constrained_rows_feeds_matchers_and_forces_eos():
    xgr = constraints.import_xgrammar()
    info = xgr.TokenizerInfo(["a", "b", "ab", "</s>"], stop_token_ids=[3])  # a toy vocabulary
    grammar = xgr.GrammarCompiler(info, max_threads=1).compile_grammar(choices_grammar(["ab"]))
    inf = float("-inf")
    done = [False, False, False, False]
    processor = constraints.ConstraintProcessor([grammar, None, grammar, grammar], xgr=xgr, vocab_size=4,
                                                prompt_length=1, done=done, eos_token_id=3)
    first = processor(torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 4))
    assert first.tolist() == [[0, inf, 0, inf], [0, 0, 0, 0], [0, inf, 0, inf], [0, inf, 0, inf]]
    # appended tokens: row 0 "a" (allowed), row 2 "b" (rejected), row 3 "ab" then ends (max_tokens)
    done[3] = True
    ids = torch.tensor([[0, 0], [0, 1], [0, 1], [0, 2]])
    second = processor(ids, torch.zeros(4, 4))
    assert second.tolist() == [[inf, 0, inf, inf], [0, 0, 0, 0], [inf, inf, inf, 0], [0, 0, 0, 0]]
    assert processor.violated == [False, False, True, False]  # the engine reports row 2 as an error
    third = processor(torch.cat([ids, torch.tensor([[1], [0], [3], [3]])], dim=1), torch.zeros(4, 4))
    assert third[0].tolist() == [inf, inf, inf, 0]  # "ab" complete: only end of sequence
    processor(torch.cat([ids, torch.tensor([[1, 3], [0, 0], [3, 3], [3, 3]])], dim=1), torch.zeros(4, 4))
    assert processor.matchers[0].is_terminated()


def test_missing_xgrammar_raises_before_the_model_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # makes `import xgrammar` fail
    eng = TransformersEngine(Transformers("no-such-org/no-such-model"), workspace=tmp_path)
    with pytest.raises(MissingDependencyError) as info:
        next(iter(eng.generate([ask("Is it?", choices=YES_NO)])))
    message = str(info.value)
    assert "xgrammar" in message and "scripts/install.sh" in message and "--no-deps" in message
    assert isinstance(info.value, ImportError) and isinstance(info.value, LazyLLMError)
    assert info.value.package == "xgrammar"
    assert eng.model is None  # the unknown model was never looked up


# --------------------------------------------------------------------------- real model


@pytest.mark.model
def test_choices_answer_is_always_one_of_the_choices(engine):
    cases = [(RATING_PROMPT, RATING), (SKY_PROMPT, YES_NO), (QUOTE_PROMPT, QUOTED)]
    requests = []
    for prompt, choices in cases:
        requests.append(ask(prompt, choices=choices, max_tokens=16))
        requests += [ask(prompt, choices=choices, max_tokens=16, temperature=1.0, seed=seed) for seed in range(3)]
    out = run(engine, requests)
    for request, response in zip(requests, (out[i] for i in range(len(requests))), strict=True):
        assert response.error is None and response.finish_reason == "stop", response
        assert response.text in request.choices
        assert 1 <= response.output_tokens <= 16
    # sampling is seeded and still varies: not every rating sample is the same
    assert len({out[i].text for i in range(4)}) > 1 or len({out[i].text for i in range(4, 8)}) > 1
    # each constraint was compiled once and is reused
    assert {("choices", c) for _, c in cases} <= set(engine._grammars.grammars)
    compiled = engine._grammars.grammars[("choices", YES_NO)]
    assert run(engine, [ask(SKY_PROMPT, choices=YES_NO, max_tokens=4)])[0].text in YES_NO
    assert engine._grammars.grammars[("choices", YES_NO)] is compiled


@pytest.mark.model
def test_json_schema_answer_parses_and_validates(engine):
    requests = [ask(PERSON_PROMPT, json_schema=PERSON_TEXT, max_tokens=64)]
    requests += [ask(PERSON_PROMPT, json_schema=PERSON_TEXT, max_tokens=64, temperature=0.8, seed=s) for s in range(3)]
    out = run(engine, requests)
    for i in range(len(requests)):
        assert_person(out[i])
        assert "\n" not in out[i].text  # compact, one line
    assert len({out[i].text for i in range(len(requests))}) > 1  # sampled rows differ from greedy


@pytest.mark.model
def test_a_batch_mixes_unconstrained_choices_and_json_rows(engine):
    plain = ask(FRANCE, max_tokens=16)
    sampled = ask(FRANCE, max_tokens=16, temperature=0.8, seed=7)
    alone = run(engine, [plain, sampled])
    mixed = run(engine, [
        ask(RATING_PROMPT, choices=RATING, max_tokens=6),
        plain,
        ask(PERSON_PROMPT, json_schema=PERSON_TEXT, max_tokens=64, temperature=0.8, seed=2),
        ask(SKY_PROMPT, choices=YES_NO, max_tokens=6, temperature=1.0, seed=4),
        sampled,
        ask(PERSON_PROMPT, json_schema=PERSON_TEXT, max_tokens=64),
    ])
    assert mixed[0].text in RATING and mixed[3].text in YES_NO
    assert_person(mixed[2])
    assert_person(mixed[5])
    assert mixed[1] == alone[0] and "Paris" in mixed[1].text
    assert mixed[4] == alone[1]


@pytest.mark.model
def test_max_tokens_too_small_for_the_grammar_gives_length(engine):
    long_choices = ("The quick brown fox jumps over the lazy dog", "A long and winding road leads home")
    out = run(engine, [
        ask(PERSON_PROMPT, json_schema=PERSON_TEXT, max_tokens=3),
        ask(QUOTE_PROMPT, choices=long_choices, max_tokens=2, temperature=0.8, seed=1),
        ask(FRANCE, max_tokens=12),
    ])
    assert (out[0].finish_reason, out[0].output_tokens, out[0].error) == ("length", 3, None)
    assert out[0].text.startswith("{") and out[0].text
    with pytest.raises(ValueError):
        json.loads(out[0].text)
    assert (out[1].finish_reason, out[1].output_tokens) == ("length", 2)
    assert any(c.startswith(out[1].text) for c in long_choices) and out[1].text not in long_choices
    assert "Paris" in out[2].text


@pytest.mark.model
def test_constraints_that_cannot_be_compiled_give_error_responses(engine):
    out = run(engine, [
        ask(SKY_PROMPT, choices=(), max_tokens=4),
        ask(PERSON_PROMPT, json_schema="{not json", max_tokens=4),
        ask(SKY_PROMPT, choices=YES_NO, json_schema=PERSON_TEXT, max_tokens=4),
        ask(PERSON_PROMPT, json_schema='{"type":"foo"}', max_tokens=4),
        ask(SKY_PROMPT, choices=YES_NO, max_tokens=4),
    ])
    reasons = ["choices is empty", "not valid JSON", "both choices and json_schema",
               'xgrammar cannot compile the json_schema: Unsupported type "foo".']
    for i, words in enumerate(reasons):
        assert out[i].finish_reason == "error" and out[i].text is None
        assert words in out[i].error and "cannot be enforced" in out[i].error
    assert out[4].text in YES_NO
