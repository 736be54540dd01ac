"""Log-probabilities of a request's choices, from next-token log-probabilities.

Engines that see the model's logits (transformers, vLLM) answer a
``Request(logprobs=True)`` with one log-probability per choice: the probability
that the unconstrained answer *starts with* the choice's tokens and does not go on
into a longer choice that extends it. On a tokenizer that splits digits, the
choices ``"1"`` and ``"10"`` share the token ``1``: ``"10"`` gets
``P(1) * P(0 | 1)`` and ``"1"`` the rest of ``P(1)``, so the masses of the choices
never overlap and sum to at most 1.

Only the next-token distributions after the prompt and after each proper prefix of
a choice are needed: :func:`prefix_paths` lists the token paths to feed (for the
scale 1-10 on such a tokenizer, one: the prompt followed by ``1``), and
:func:`choice_logprobs` combines the distributions.

>>> choices = [(33,), (34,), (33, 32)]          # "1", "2", "10"
>>> prefix_paths(choices)
[(33,)]
>>> import math
>>> dists = {(): {33: math.log(0.6), 34: math.log(0.4)}, (33,): {32: math.log(0.5)}}
>>> [round(math.exp(v), 3) for v in choice_logprobs(choices, lambda p, t: dists[p].get(t, -math.inf))]
[0.3, 0.4, 0.3]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["prefix_paths", "choice_logprobs", "normalize", "choice_logprobs_from_top"]

Tokens = tuple[int, ...]


def prefix_paths(choices: Sequence[Tokens]) -> list[Tokens]:
    """The token paths to append to the prompt so that every proper prefix of every
    choice is a prefix of some path: the maximal proper prefixes, sorted; ``[]``
    when every choice is one token (the prompt alone is enough)."""
    proper = {tuple(c[:-1]) for c in choices if len(c) > 1}
    return sorted(p for p in proper if not any(q != p and q[: len(p)] == p for q in proper))


def choice_logprobs(choices: Sequence[Tokens], next_logprob: Callable[[Tokens, int], float]) -> list[float]:
    """Per choice, log P(the answer starts with it and not with a longer choice extending it).

    Parameters
    ----------
    choices : sequence of tuple of int
        The token ids of each choice (non-empty).
    next_logprob : callable (prefix, token) -> float
        ``log P(token | prompt + prefix)``; called only with proper prefixes of choices.

    Returns
    -------
    list of float
        One natural-log probability per choice (``-inf`` for none), not normalised.
    """
    if any(len(c) == 0 for c in choices):
        raise ValueError("a choice encodes to no tokens")
    starts = []
    for c in choices:
        starts.append(sum(next_logprob(tuple(c[:j]), c[j]) for j in range(len(c))))
    out = []
    for i, c in enumerate(choices):
        mass = math.exp(starts[i]) if starts[i] > -math.inf else 0.0
        longer = [j for j, d in enumerate(choices) if len(d) > len(c) and tuple(d[: len(c)]) == tuple(c)]
        minimal = [j for j in longer
                   if not any(k != j and len(choices[k]) < len(choices[j])
                              and tuple(choices[j][: len(choices[k])]) == tuple(choices[k]) for k in longer)]
        mass -= sum(math.exp(starts[j]) for j in minimal if starts[j] > -math.inf)
        out.append(math.log(mass) if mass > 1e-300 else -math.inf)
    return out


def normalize(logprobs: Sequence[float]) -> list[float] | None:
    """Probabilities proportional to ``exp(logprobs)``, summing to 1; None when all are ``-inf``.

    >>> normalize([math.log(0.2), math.log(0.2), -math.inf])
    [0.5, 0.5, 0.0]
    """
    finite = [v for v in logprobs if v > -math.inf]
    if not finite:
        return None
    top = max(finite)
    weights = [math.exp(v - top) if v > -math.inf else 0.0 for v in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def choice_logprobs_from_top(choices: Sequence[str],
                             positions: Sequence[tuple[str, float, dict[str, float]]]) -> list[float]:
    """Per choice log-probabilities from an API's ``top_logprobs`` along one generated answer.

    Parameters
    ----------
    choices : sequence of str
        The choices, as text.
    positions : sequence of (token, logprob, top)
        Per generated position: the generated token's text, its log-probability,
        and the top alternatives ``{token text: logprob}`` (OpenAI ``top_logprobs``).

    Returns
    -------
    list of float
        Per choice, log P(the answer starts with it and not with a longer choice),
        as far as the returned alternatives show it: a choice is found where the
        generated text so far is a prefix of it and the rest of it is one of the
        top tokens at that position (leading whitespace of the first token is
        ignored; tokens with the same text add up). A choice that needs a path the
        answer did not take (``"10"`` when the answer began with ``"7"``) gets
        ``-inf``, so its mass stays with its prefix choice (``"1"``): exact for
        single-token choices, a lower bound for the others.

    >>> import math
    >>> top0 = {"7": math.log(0.5), "1": math.log(0.3), " 7": math.log(0.1)}
    >>> lps = choice_logprobs_from_top(["1", "7", "10"], [("7", math.log(0.5), top0)])
    >>> [round(math.exp(v), 3) for v in lps]
    [0.3, 0.6, 0.0]
    """
    start = [-math.inf] * len(choices)
    for i, choice in enumerate(choices):
        before, prefix = 0.0, ""
        for j, (token, logprob, top) in enumerate(positions):
            if not choice.startswith(prefix) or len(prefix) >= len(choice):
                break
            rest = choice[len(prefix):]
            hits = [lp for t, lp in top.items() if (t.lstrip() if j == 0 else t) == rest]
            if hits:
                start[i] = before + math.log(sum(math.exp(v) for v in hits))
                break
            token_text = token.lstrip() if j == 0 else token
            before += logprob
            prefix += token_text
    out = []
    for i, c in enumerate(choices):
        mass = math.exp(start[i]) if start[i] > -math.inf else 0.0
        longer = [j for j, d in enumerate(choices) if len(d) > len(c) and d.startswith(c)]
        minimal = [j for j in longer if not any(k != j and len(choices[k]) < len(choices[j])
                                                and choices[j].startswith(choices[k]) for k in longer)]
        mass -= sum(math.exp(start[j]) for j in minimal if start[j] > -math.inf)
        out.append(math.log(mass) if mass > 1e-300 else -math.inf)
    return out
