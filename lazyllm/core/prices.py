"""Prices of API models, as data: USD per million input and output tokens.

The table covers the usual OpenAI chat models at their standard (synchronous) rates,
as published on OpenAI's pricing page (checked 2025-08). Prices change: a spec's own
``price_per_million=(input, output)`` overrides the table, and an unknown model
(any model of a self-hosted server, for one) has no price, so ``explain()`` shows
no cost for it rather than a wrong one.

The OpenAI Batch API bills half of the standard rates (:data:`BATCH_DISCOUNT`).

>>> lookup_price("gpt-4o-mini")
(0.15, 0.6)
>>> lookup_price("gpt-4o-mini-2024-07-18")   # a dated snapshot: its family's price
(0.15, 0.6)
>>> lookup_price("HuggingFaceTB/SmolLM2-135M-Instruct") is None
True
"""

from __future__ import annotations

__all__ = ["PRICES", "BATCH_DISCOUNT", "lookup_price"]

#: model id (or family prefix) -> (USD per 1M input tokens, USD per 1M output tokens)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}

#: Fraction of the standard price that the Batch API bills.
BATCH_DISCOUNT = 0.5


def lookup_price(model: str) -> tuple[float, float] | None:
    """USD per million (input, output) tokens of ``model``, or None when it is not in the table.

    Parameters
    ----------
    model : str
        A model id. An exact entry wins; else the longest entry that ``model`` starts
        with followed by ``-`` (``"gpt-4o-2024-08-06"`` is priced as ``"gpt-4o"``, and
        ``"gpt-4o-mini-2024-07-18"`` as ``"gpt-4o-mini"``, not as ``"gpt-4o"``).
    """
    name = model.strip().lower()
    if name in PRICES:
        return PRICES[name]
    best = max((k for k in PRICES if name.startswith(k + "-")), key=len, default=None)
    return PRICES[best] if best is not None else None
