"""Reasoning traces apart from answers: ``<think>...</think>`` text and servers' separate fields.

Reasoning models (DeepSeek-R1 and its distillations, Qwen3, ...) write a trace before
the answer, either inline between ``<think>`` and ``</think>`` or, behind a server with a
reasoning parser (``vllm serve --reasoning-parser ...``, OpenAI's o-series), in a
separate ``reasoning_content`` field. Engines return the answer as ``Response.text`` and
the trace as ``Response.reasoning``, so that every consumer of an answer (judges, LLM
filters, the next prompt) reads the answer alone.

>>> split_reasoning("<think>2+2 is 4.</think> The answer is 4.")
('The answer is 4.', '2+2 is 4.')
>>> split_reasoning("2+2 is 4.</think>4")          # the chat template opened the trace
('4', '2+2 is 4.')
>>> split_reasoning("<think>Still thinking")        # cut by max_tokens inside the trace
('', 'Still thinking')
>>> split_reasoning("No trace here.")
('No trace here.', None)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lazyllm.core.protocols import Request, Response

__all__ = ["THINK_OPEN", "THINK_CLOSE", "split_reasoning", "split_response", "share_of_tokens"]

#: The tags reasoning models put around their trace.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str | None]:
    """The answer and the reasoning trace of a generated text.

    Parameters
    ----------
    text : str
        The generated text.

    Returns
    -------
    (str, str or None)
        The answer (stripped) and the trace (stripped), or ``(text, None)`` when the text
        has no trace. A trace is recognised only at the start of the text: ``<think>``
        (after white space) up to ``</think>``, or everything before a ``</think>`` that
        has no opening tag (chat templates that open the trace in the prompt). A trace
        that never closes (``max_tokens`` ran out inside it) gives the answer ``""``.

    Notes
    -----
    Cost: two string searches. Same rule as vLLM's ``deepseek_r1`` reasoning parser.
    """
    close = text.find(THINK_CLOSE)
    start = text.lstrip()
    if start.startswith(THINK_OPEN):
        body = start[len(THINK_OPEN):]
        end = body.find(THINK_CLOSE)
        if end < 0:
            return "", body.strip()
        return body[end + len(THINK_CLOSE):].strip(), body[:end].strip()
    if close >= 0 and THINK_OPEN not in text[:close]:
        return text[close + len(THINK_CLOSE):].strip(), text[:close].strip()
    return text, None


def share_of_tokens(output_tokens: int, reasoning: str, answer: str) -> int:
    """Estimated tokens of the trace: ``output_tokens`` split by the characters of trace and
    answer (for engines whose server reports no reasoning-token count and that hold no
    tokenizer).

    Parameters
    ----------
    output_tokens : int
        All generated tokens of the response (trace and answer).
    reasoning, answer : str
        The two parts.

    Returns
    -------
    int
        Between 0 and ``output_tokens``.

    >>> share_of_tokens(100, "x" * 30, "y" * 10)
    75
    """
    total = len(reasoning) + len(answer)
    if output_tokens <= 0 or total == 0:
        return 0
    return min(output_tokens, round(output_tokens * len(reasoning) / total))


def split_response(response: Response, request: Request | None = None,
                   count: Callable[[str], int] | None = None) -> Response:
    """``response`` with an inline ``<think>`` trace moved from ``text`` to ``reasoning``.

    Parameters
    ----------
    response : Response
        An engine's response. Unchanged when it failed, already has ``reasoning``, or its
        text has no trace.
    request : Request, optional
        The request: a constrained one (choices, JSON schema, log-probabilities, reward) is
        left alone (its text is the constrained answer).
    count : callable str -> int, optional
        Tokens of a text (the engine's tokenizer); without it the trace's tokens are
        estimated with :func:`share_of_tokens`.

    Returns
    -------
    Response
        ``text`` the answer, ``reasoning`` the trace, ``reasoning_tokens`` the trace's
        tokens (at most ``output_tokens``; included in ``output_tokens``).
    """
    if response.text is None or response.reasoning is not None:
        return response
    if request is not None and (request.choices is not None or request.json_schema is not None
                                or request.logprobs or request.reward):
        return response
    answer, trace = split_reasoning(response.text)
    if trace is None:
        return response
    if count is not None:
        tokens = min(response.output_tokens, count(f"{THINK_OPEN}{trace}{THINK_CLOSE}"))
    else:
        tokens = share_of_tokens(response.output_tokens, trace, answer)
    return dataclasses.replace(response, text=answer, reasoning=trace, reasoning_tokens=tokens)
