"""Run the docstring examples of the public modules (they use the deterministic test engine)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lazyllm.frame",
    "lazyllm.io",
    "lazyllm.planner.workspace",
    "lazyllm.training",
    "lazyllm.preferences",
    "lazyllm.doctor",
    "lazyllm.backends.hardware",
    "lazyllm.backends.ratelimit",
    "lazyllm.models",
    "lazyllm.validation",
    "lazyllm.planner.templates",
    "lazyllm.planner.rules.predicate_pushdown",
    "lazyllm.planner.rules.limit_pushdown",
    "lazyllm.planner.rules.projection_pruning",
    "lazyllm.planner.rules.derivation_pushdown",
    "lazyllm.planner.rules.sort_pushdown",
    "lazyllm.planner.rules.projection_merge",
    "lazyllm.planner.rules.selection_pushdown",
    "lazyllm.planner.rules.llm_filter_placement",
    "lazyllm.planner.optimizer",
    "lazyllm.planner.explain",
    "lazyllm.planner.rules.sql_predicate_pushdown",
    "lazyllm.planner.rules._exprs",
    "lazyllm.planner.nodes",
    "lazyllm.cards",
    "lazyllm.hub",
    "lazyllm.backends.testing",
    "lazyllm.backends.constraints",
    "lazyllm.backends.answers",
    "lazyllm.backends.reasoning",
    "lazyllm.backends.vllm_server",
    "lazyllm.planner.budget",
    "lazyllm.core.prices",
    "lazyllm.core.redact",
    "lazyllm.core.protocols",
    "lazyllm.backends.transformers",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that collect use ./.lazyllm
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
