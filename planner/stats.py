"""What one LLM node did in a run (or, in a dry run, would do): :class:`NodeStats`.

Written by the scheduler, read by the executor's run log and by ``explain()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["NodeStats"]


@dataclass
class NodeStats:
    """What one LLM node did (or, in a dry run, would do)."""

    fingerprint: str
    kind: str
    column: str
    model: str
    rows_in: int = 0
    requests: int = 0
    unique_requests: int = 0
    cache_hits: int = 0
    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: of ``output_tokens``: reasoning traces (the answers' tokens are the difference)
    reasoning_tokens: int = 0
    seconds: float = 0.0
    uncertain_rows: int = 0  # dry run: rows whose inputs are not computed yet
    est_input_tokens: int = 0  # dry run: prompt tokens of the calls to make
    est_output_tokens: int = 0  # dry run: generated tokens of the calls to make
    input_basis: str = ""  # "tokenizer" or "chars/4"
    output_basis: str = ""  # "max_tokens" (an upper bound) or "cached mean"
    est_cost: float | None = None  # USD, for priced API models
    #: tokens -> requests, over the node's distinct requests (computed or served from the cache)
    input_tokens_histogram: dict[int, int] = field(default_factory=dict)
    output_tokens_histogram: dict[int, int] = field(default_factory=dict)
    #: dry run on a sample: input rows the figures were measured on (0: every row), of ``rows_total``;
    #: the counts above are then scaled to ``rows_total``
    sample_rows: int = 0
    rows_total: int = 0
    #: dry run on a sample: 95% interval (Wilson) of the LLM calls to make
    calls_interval: tuple[int, int] | None = None

    def count_tokens(self, input_tokens: Iterable[int], output_tokens: Iterable[int]) -> None:
        """Add requests to the token histograms.

        Parameters
        ----------
        input_tokens, output_tokens : iterable of int
            Per distinct request of the node: its prompt and generated tokens.
        """
        for histogram, tokens in ((self.input_tokens_histogram, input_tokens),
                                  (self.output_tokens_histogram, output_tokens)):
            for value, n in Counter(tokens).items():
                histogram[value] = histogram.get(value, 0) + n

    @property
    def answer_tokens(self) -> int:
        """Generated tokens of the answers alone (``output_tokens`` less the reasoning traces')."""
        return self.output_tokens - self.reasoning_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0
