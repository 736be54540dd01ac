"""Bad input is rejected before any model is loaded or any request is sent.

One test per class of bad input; each counts the deterministic engine's calls and
submissions (zero) and checks the error class and that the message names the fix.
Classes covered:

1. a sampling parameter of the wrong type (``temperature="hot"``, ``max_tokens="10"``,
   ``seed=1.5``, ``n=True``), in every LLM operator and ``llm_predicate``;
2. a sampling parameter out of range (``temperature=-1``, ``top_p=0``, ``top_p=1.5``,
   ``max_tokens=0``, ``n=0``, ``temperature=inf``);
3. other operator parameters of the wrong shape: an output column name that is not a
   string, bad ``choices`` (empty, duplicated, a bare string), bad ``stop``, a judge
   ``scale`` that is not two increasing ints;
4. a ``json_schema`` that is not a valid JSON Schema (``{"type": "nonsense"}``);
5. an output column that already exists (``generate("doc", prompt="{{ doc }}")``):
   an error unless ``overwrite=True``;
6. a pairwise judge of a column against itself: an error (every verdict a tie);
7. an empty in-memory source: an :class:`EmptyInputWarning`, and collecting calls nothing;
8. a template that reads a column the frame does not have (``ColumnNotFoundError``);
9. ``concat`` of frames whose schemas do not match (missing/extra columns, dtypes);
10. a ``split`` with a part of fraction 0 (error) or a part that rounds to no rows
    (warning);
11. a local model folder without a tokenizer or without the named GGUF file
    (``ModelNotFoundError`` at the operator call, before loading);
12. a model folder path that does not exist (``ModelNotFoundError``);
13. a prompt that reads a column of the wrong type: binary or Python objects (error),
    all values missing (warning); lists and structs are allowed (templates loop over them);
14. a workspace argument that is not a usable folder (see ``tests/planner/test_workspace.py``).

Not rejected at the operator, on purpose: a Hub id that is not in the local cache while
offline (a collect whose answers are all cached must run without the model; the engine
raises ``ModelNotFoundError`` naming ``HF_HUB_OFFLINE`` when it first needs it, see
``tests/backends/test_transformers.py``).
"""

from __future__ import annotations

import warnings

import polars as pl
import pytest

import lazyllm
from lazyllm.errors import ColumnNotFoundError, LazyLLMError, ModelNotFoundError, ParameterError, PlanError
from lazyllm.validation import EmptyInputWarning

MODEL = lazyllm.TestModel(name="validation")


@pytest.fixture
def docs():
    return lazyllm.from_dicts([{"doc": "a", "q": "x", "a1": "p", "a2": "q"}, {"doc": "b", "q": "y", "a1": "r",
                                                                              "a2": "s"}])


@pytest.fixture
def no_calls(counters):
    """Asserts after the test that the engine was never called."""
    yield counters
    assert counters.CALLS == 0 and counters.SUBMISSIONS == []


OPERATORS = {
    "generate": lambda f, **kw: f.generate("out", MODEL, prompt="{{ doc }}", **kw),
    "judge": lambda f, **kw: f.judge("score", MODEL, question="q", answer="doc", **kw),
    "judge_pairwise": lambda f, **kw: f.judge_pairwise("pref", MODEL, a="a1", b="a2", question="q", **kw),
    "llm_predicate": lambda f, **kw: f.filter(lazyllm.llm_predicate(MODEL, "ok? {{ doc }}", **kw)),
}


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("param,value", [("temperature", "hot"), ("seed", 1.5), ("seed", "1"),
                                         ("temperature", None)])
def test_wrong_type_of_a_sampling_parameter(docs, no_calls, op, param, value):
    with pytest.raises(ParameterError, match=rf"{op}\({param}=") as info:
        OPERATORS[op](docs, **{param: value})
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert "got a" in str(info.value) and "Pass " in str(info.value)


@pytest.mark.parametrize("op", ["generate", "judge", "judge_pairwise"])
def test_wrong_type_of_max_tokens(docs, no_calls, op):
    with pytest.raises(ParameterError, match=r"max_tokens='10'.*Pass a positive int"):
        OPERATORS[op](docs, max_tokens="10")


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -1}, r"temperature=-1\): expected a number >= 0"),
    ({"temperature": float("inf")}, r"temperature=inf"),
    ({"top_p": 0}, r"top_p=0\): expected a number > 0 and <= 1"),
    ({"top_p": 1.5}, r"top_p=1.5\)"),
    ({"max_tokens": 0}, r"max_tokens=0\): expected an int >= 1"),
    ({"n": 0}, r"n=0\): expected an int >= 1"),
    ({"n": True}, r"n=True\): expected an int >= 1, got a bool"),
])
def test_a_sampling_parameter_out_of_range(docs, no_calls, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        OPERATORS["generate"](docs, **kwargs)


@pytest.mark.parametrize("call,match", [
    (lambda f: f.generate(3, MODEL, prompt="{{ doc }}"), r"generate\(column=3\): expected a column name"),
    (lambda f: f.generate("c", MODEL, prompt="{{ doc }}", choices=[]), r"choices=\[\]\): expected distinct"),
    (lambda f: f.generate("c", MODEL, prompt="{{ doc }}", choices=["y", "y"]), r"expected distinct"),
    (lambda f: f.generate("c", MODEL, prompt="{{ doc }}", choices="yes"), r"expected a list of labels"),
    (lambda f: f.generate("c", MODEL, prompt="{{ doc }}", stop=[""]), r"stop=\[''\]\)"),
    (lambda f: f.generate("c", MODEL, prompt="{{ doc }}", stop=5), r"stop=5\)"),
    (lambda f: f.judge("s", MODEL, question="q", answer="doc", scale=(10, 1)), r"scale=\(10, 1\)"),
    (lambda f: f.judge("s", MODEL, question="q", answer="doc", scale=(1.5, 10)), r"two ints"),
    (lambda f: f.judge("s", MODEL, question="q", answer="doc", scale=7), r"scale=7"),
])
def test_other_parameters_of_the_wrong_shape(docs, no_calls, call, match):
    with pytest.raises(ParameterError, match=match):
        call(docs)


@pytest.mark.parametrize("schema", [{"type": "nonsense"}, '{"type": "object", "properties": {"a": {"type": 5}}}',
                                    {"type": "object", "required": "a"}])
def test_an_invalid_json_schema(docs, no_calls, schema):
    with pytest.raises(PlanError, match="not a valid JSON Schema") as info:
        docs.generate("out", MODEL, prompt="{{ doc }}", json_schema=schema)
    assert "Fix the schema" in str(info.value)


def test_a_valid_json_schema_is_accepted(docs, no_calls):
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    assert "out" in docs.generate("out", MODEL, prompt="{{ doc }}", json_schema=schema).columns


def test_an_output_column_that_exists(docs, counters, tmp_path):
    with pytest.raises(PlanError, match=r"replace the existing column\(s\) 'doc'.*overwrite=True"):
        docs.generate("doc", MODEL, prompt="{{ doc }}")
    with pytest.raises(PlanError, match="'q_error'"):
        docs.generate("out", MODEL, prompt="{{ doc }}", error_column="q_error").generate(
            "q", MODEL, prompt="{{ doc }}", error_column="q_error")
    with pytest.raises(PlanError, match="'a1'"):
        docs.judge_pairwise("a1", MODEL, a="a1", b="a2", question="q")
    assert counters.CALLS == 0
    out = docs.generate("doc", MODEL, prompt="{{ doc }}", overwrite=True).collect(workspace=tmp_path,
                                                                                     progress=False)
    assert out.columns == ["doc", "q", "a1", "a2", "doc_error"]
    assert out["doc"].to_list() == ["echo[0|greedy]: a", "echo[0|greedy]: b"] and counters.CALLS == 2


def test_a_pairwise_judge_of_a_column_against_itself(docs, no_calls):
    with pytest.raises(PlanError, match=r"a='a1', b='a1'\) compares a column with itself.*two different"):
        docs.judge_pairwise("pref", MODEL, a="a1", b="a1", question="q")


def test_an_empty_source_warns_and_calls_nothing(tmp_path, no_calls):
    with pytest.warns(EmptyInputWarning, match="no rows"):
        empty = lazyllm.from_polars(pl.DataFrame({"doc": []}, schema={"doc": pl.String}))
    out = empty.generate("out", MODEL, prompt="{{ doc }}").collect(workspace=tmp_path, progress=False)
    assert out.height == 0 and out.columns == ["doc", "out", "out_error"]


def test_a_template_that_reads_a_missing_column(docs, no_calls):
    with pytest.raises(ColumnNotFoundError, match=r"'body'.*Existing columns: 'doc'"):
        docs.generate("out", MODEL, prompt="{{ body }}")


@pytest.mark.parametrize("other,match", [
    (pl.DataFrame({"doc": ["c"]}), r"missing \['q', 'a1', 'a2'\]"),
    (pl.DataFrame({"doc": ["c"], "q": ["z"], "a1": ["t"], "a2": ["u"], "x": [1]}), r"extra \['x'\]"),
    (pl.DataFrame({"doc": [1], "q": ["z"], "a1": ["t"], "a2": ["u"]}), r"different dtypes \(doc: String vs Int64\)"),
])
def test_concat_of_frames_whose_schemas_differ(docs, no_calls, other, match):
    with pytest.raises(PlanError, match=match) as info:
        lazyllm.concat([docs.generate("out", MODEL, prompt="{{ doc }}").drop("out", "out_error"),
                        lazyllm.from_polars(other)])
    assert "how='diagonal'" in str(info.value)
    relaxed = lazyllm.concat([docs, lazyllm.from_polars(other)], how="diagonal_relaxed")
    assert "doc" in relaxed.columns


def test_a_split_that_leaves_a_part_empty(docs, no_calls):
    with pytest.raises(ParameterError, match=r"fractions\['test'\]=0\)"):
        docs.split({"train": 1.0, "test": 0})
    with pytest.warns(EmptyInputWarning, match=r"\['test'\] get no rows out of 2"):
        docs.split({"train": 0.9, "test": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs.split({"train": 0.5, "test": 0.5})


def test_a_model_folder_without_a_tokenizer(docs, tmp_path, no_calls):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="has no tokenizer file") as info:
        docs.generate("out", lazyllm.Transformers(str(folder)), prompt="{{ doc }}")
    assert "tokenizer.save_pretrained" in str(info.value) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError, match="no GGUF file 'm.gguf'"):
        docs.generate("out", lazyllm.Transformers(str(folder), gguf_file="m.gguf"), prompt="{{ doc }}")
    (folder / "tokenizer.json").write_text("{}")
    assert "out" in docs.generate("out", lazyllm.Transformers(str(folder)), prompt="{{ doc }}").columns


def test_every_error_here_is_a_lazyllm_error():
    for cls in (ParameterError, PlanError, ColumnNotFoundError, ModelNotFoundError):
        assert issubclass(cls, LazyLLMError)


def test_a_model_folder_that_does_not_exist(docs, tmp_path, no_calls):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        docs.generate("out", lazyllm.Transformers(str(tmp_path / "no" / "such" / "model")), prompt="{{ doc }}")
    assert "out" in docs.generate("out", lazyllm.Transformers("some-org/some-model"), prompt="{{ doc }}").columns


def test_a_prompt_that_reads_a_column_of_the_wrong_type(tmp_path, no_calls):
    frame = lazyllm.from_polars(pl.DataFrame({"raw": [b"\x00\x01"], "items": [["a", "b"]], "gone": [None]}))
    with pytest.raises(PlanError, match=r"reads 'raw' \(Binary\).*cast\(pl.String\)"):
        frame.generate("out", MODEL, prompt="{{ raw }}")
    with pytest.warns(EmptyInputWarning, match=r"\['gone'\].*all missing"):
        frame.generate("out", MODEL, prompt="{{ gone }}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        looped = frame.generate("out", MODEL, prompt="{% for i in items %}{{ i }} {% endfor %}")
    assert looped.columns[-2:] == ["out", "out_error"]
