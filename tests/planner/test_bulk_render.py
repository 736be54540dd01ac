"""Rendering prompts in bulk (polars) must equal rendering them row by row (Jinja2): same
messages, same cache keys, same outputs, error columns and stats."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazyllm
from lazyllm.planner.executor import collect
from lazyllm.planner.nodes import LLMNode
from lazyllm.planner.templates import PromptTemplate, render_column

TRICKY = ["", " ", "\n", "a\r\nb", "trailing\n", "é ü 中文 🙂", "{{ x }}", "\\", '"', "\x00", "None", "0", "\u2028"]
_text = st.text(max_size=12) | st.sampled_from(TRICKY)

PLAIN = ["Say {{ x }}", "{{ x }}", "no variables\n", "{{x}}{{ y }}", "", "a\r\nb {{ x }}\n", "  {{- x }} and {{ y -}}  !",
         "{# note #}{{ y }}:{{ n }}", "{% raw %}{{ x }}{% endraw %} {{ x }}", "é{{ n }}\n\n"]
NOT_PLAIN = ["{{ x | upper }}", "{{ x ~ y }}", "{% if x %}{{ x }}{% endif %}", "{{ 'a' }}", "{{ d.k }}",
             "{{ x if x else y }}", "{% for c in x %}{{ c }}{% endfor %}", "{{ x | default('?') }}"]


@pytest.mark.parametrize("source", NOT_PLAIN)
def test_templates_that_compute_are_not_rendered_in_bulk(source):
    df = pl.DataFrame({"x": ["a"], "y": ["b"], "d": [{"k": "v"}]})
    assert render_column(PromptTemplate.parse(source), df, {c: c for c in df.columns}) is None


@pytest.mark.parametrize("dtype", [pl.Float64, pl.Boolean, pl.Date, pl.List(pl.String)])
def test_columns_jinja_renders_differently_are_not_rendered_in_bulk(dtype):
    df = pl.DataFrame({"x": pl.Series([None], dtype=dtype)})
    assert render_column(PromptTemplate.parse("{{ x }}"), df, {"x": "x"}) is None


@settings(max_examples=60, deadline=None)
@given(source=st.sampled_from(PLAIN),
       rows=st.lists(st.tuples(st.none() | _text, _text, st.none() | st.integers(-(2**63), 2**63 - 1)),
                     min_size=1, max_size=8))
def test_bulk_rendering_equals_jinja_row_by_row(source, rows):
    df = pl.DataFrame({"x": [r[0] for r in rows], "y": [r[1] for r in rows], "n": [r[2] for r in rows]},
                      schema={"x": pl.String, "y": pl.String, "n": pl.Int64})
    template = PromptTemplate.parse(source)
    bulk = render_column(template, df, {c: c for c in df.columns})
    assert bulk is not None and bulk.len() == df.height
    for row, value in zip(df.to_dicts(), bulk.to_list()):
        if any(row[c] is None for c in template.columns):
            assert value is None  # the null-input rule: no request is sent for this row
        else:
            assert value == template.render(row)


def _frame(rows):
    df = pl.DataFrame({"q": [r[0] for r in rows], "a": [r[1] for r in rows], "n": list(range(len(rows)))},
                      schema={"q": pl.String, "a": pl.String, "n": pl.Int64})
    model = lazyllm.TestModel(rules=(("5", "5"), ("yes", "yes")), batch_size=3)
    keep = lazyllm.llm_predicate(model, "Keep {{ q }}? yes")
    return (lazyllm.from_polars(df)
            .generate("g", model, prompt="Say {{ q }} #{{ n }}", system="Be {{ a }}.", n=2)
            .judge("s", model, question="q", answer="g")
            .filter(keep)
            .generate("h", model, prompt="{{ q | upper }} {{ a }}"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.none() | _text, _text), min_size=1, max_size=10))
def test_bulk_and_row_by_row_runs_are_identical(tmp_path_factory, monkeypatch, rows):
    from lazyllm import Workspace

    fast_ws = Workspace(tmp_path_factory.mktemp("fast"))
    slow_ws = Workspace(tmp_path_factory.mktemp("slow"))
    bulk_calls = []
    real = LLMNode.messages_column
    with monkeypatch.context() as m:
        m.setattr(LLMNode, "messages_column", lambda self, df: bulk_calls.append(real(self, df)) or bulk_calls[-1])
        fast = collect(_frame(rows).plan, workspace=fast_ws, progress=False)
    assert any(b is not None for b in bulk_calls)  # the bulk path ran
    with monkeypatch.context() as m:
        m.setattr(LLMNode, "messages_column", lambda self, df: None)
        slow = collect(_frame(rows).plan, workspace=slow_ws, progress=False)
    assert fast.frames[0].equals(slow.frames[0], null_equal=True)
    assert [_numbers(s) for s in fast.stats.values()] == [_numbers(s) for s in slow.stats.values()]
    assert {k for k, _ in fast_ws.cache.items()} == {k for k, _ in slow_ws.cache.items()}  # same cache keys


def _numbers(stats):
    out = dataclasses.asdict(stats)
    out.pop("seconds")
    return out
