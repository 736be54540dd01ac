"""Helpers shared by the engine tests: build a chat request, run requests through an engine."""

from __future__ import annotations

from typing import Any

from lazyllm.core.protocols import Message, Request, Response, SamplingParams


def ask(question: str, *, choices=None, json_schema=None, **params: Any) -> Request:
    """One user message with sampling params (and an optional constraint)."""
    return Request(messages=(Message("user", question),), params=SamplingParams(**params),
                   choices=choices, json_schema=json_schema)


def run(engine: Any, requests) -> dict[int, Response]:
    """Every response by request index; checks each index is yielded exactly once."""
    out: dict[int, Response] = {}
    for batch in engine.generate(requests):
        for i, response in batch:
            assert i not in out, "every index is yielded exactly once"
            out[i] = response
    assert sorted(out) == list(range(len(requests)))
    return out
