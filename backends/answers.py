"""Checks of constrained answers returned by engines that do not decode in this process.

The OpenAI-compatible and vLLM engines ask the server (or the worker) to enforce a
request's ``choices`` / ``json_schema``; :func:`check_constraint` verifies the answer
before it becomes a result, so a server that ignored the constraint gives an error
response, never an unconstrained answer.
"""

from __future__ import annotations

import json
from typing import Any

from .protocols import Request

__all__ = ["check_constraint"]


def check_constraint(request: Request, text: str, *, wrapped: bool = False) -> str:
    """The answer text when it satisfies the request's constraint.

    Parameters
    ----------
    request : Request
        A request with ``choices`` or ``json_schema``.
    text : str
        The answer as generated (not stripped).
    wrapped : bool
        The choice came as the JSON ``{"answer": choice}`` (OpenAI structured outputs
        have no choice constraint; the OpenAI engine asks for that wrapper).

    Returns
    -------
    str
        The choice (unwrapped), or ``text`` itself for a JSON schema.

    Raises
    ------
    ValueError
        The answer is not one of the choices, is not JSON, or does not match the
        schema (checked with ``jsonschema``); the message says which.

    Examples
    --------
    >>> from lazyllm.backends.protocols import Request
    >>> check_constraint(Request(prompt="?", choices=("yes", "no")), '{"answer": "no"}', wrapped=True)
    'no'
    >>> check_constraint(Request(prompt="?", json_schema='{"type": "integer"}'), "7")
    '7'
    """
    if request.choices is not None:
        answer: Any = text
        if wrapped:
            try:
                answer = json.loads(text)["answer"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"The answer {text[:200]!r} is not the JSON {{\"answer\": ...}} "
                                 "that was asked for.") from None
        if answer not in request.choices:
            raise ValueError(f"The answer {str(answer)[:200]!r} is not one of the choices {list(request.choices)!r}.")
        return answer
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"The answer is not JSON ({exc}): {text[:200]!r}.") from None
    try:
        jsonschema.validate(value, json.loads(request.json_schema or "{}"))
    except jsonschema.ValidationError as exc:
        raise ValueError(f"The answer does not match the json_schema: {exc.message}.") from None
    return text
