"""Checks of constrained answers returned by engines that do not decode in this process.

The OpenAI-compatible and vLLM engines ask the server (or the worker) to enforce a
request's ``choices`` / ``json_schema``; :func:`check_constraint` verifies the answer
before it becomes a result, so a server that ignored the constraint gives an error
response, never an unconstrained answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lazyllm.core.protocols import Request

__all__ = ["check_constraint", "parse_answer"]


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
    >>> from lazyllm.core.protocols import Request
    >>> check_constraint(Request(prompt="?", choices=("yes", "no")), '{"answer": "no"}', wrapped=True)
    'no'
    >>> check_constraint(Request(prompt="?", json_schema='{"type": "integer"}'), "7")
    '7'
    """
    answer = parse_answer(text, request.choices, request.json_schema, wrapped=wrapped)
    return answer if request.choices is not None else text


def parse_answer(text: str, choices: Sequence[str] | None, json_schema: str | Mapping[str, Any] | None, *,
                 wrapped: bool = False) -> Any:
    """The value of a constrained answer: the choice (str), or the parsed JSON value.

    The one place where lazyllm checks an answer against ``choices`` / ``json_schema``
    (with ``jsonschema``): used by the planner for every engine's answers, and by the
    engines that cannot enforce a constraint in this process. A choice may arrive with
    surrounding whitespace. Without a constraint the text is returned as is.

    Raises
    ------
    ValueError
        The answer is not one of the choices, is not valid JSON, or does not match the
        schema; the message says which.

    >>> parse_answer(" yes", ("yes", "no"), None)
    'yes'
    >>> parse_answer('{"a": 1}', None, {"type": "object"})
    {'a': 1}
    """
    if choices is not None:
        answer: Any = text
        if wrapped:
            try:
                answer = json.loads(text)["answer"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"The answer {text[:200]!r} is not the JSON {{\"answer\": ...}} "
                                 "that was asked for.") from None
        if answer not in choices and isinstance(answer, str) and answer.strip() in choices:
            answer = answer.strip()
        if answer not in choices:
            raise ValueError(f"The answer is not one of the choices: {str(answer)[:200]!r} is not one of "
                             f"{list(choices)!r}.")
        return answer
    if json_schema is None:
        return text
    import jsonschema

    schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"The answer is not valid JSON ({exc}): {text[:200]!r}.") from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        raise ValueError(f"The answer does not match the JSON schema: {exc.message}.") from None
    return value
