"""Preference data recipes and the win-rate report.

- :func:`best_of_n_pairs`: ``generate(n=k)`` samples plus a score per sample ->
  ``(prompt, chosen, rejected)`` rows, best vs worst sample, kept only when the
  score margin reaches ``min_margin`` (the rejection-sampling step of Llama 3-style
  post-training: Dubey et al. 2024, "The Llama 3 Herd of Models", section 4.2), and
  :func:`kto_rows`, the unpaired ``(prompt, completion, label)`` format KTO takes.
- :func:`win_rate`: did training help? Per-prompt calibrated pairwise preferences
  of a tuned model's answers against a baseline's become a win rate with a
  bootstrap confidence interval, and a length-controlled win rate (Dubois et al.
  2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic
  Evaluators"): a logistic regression of the preference on the normalised length
  difference, read at equal length.

These run on collected polars data (cheap, no LLM calls); the LLM work (samples,
scores, pairwise verdicts) is ordinary lazy frame operations before them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from lazyllm.core.errors import ColumnNotFoundError, PlanError

__all__ = ["best_of_n_pairs", "kto_rows", "win_rate", "WinRate"]


def _need(df: pl.DataFrame, *columns: str, where: str) -> None:
    for c in columns:
        if c not in df.columns:
            raise ColumnNotFoundError(c, df.columns, where=where)


def best_of_n_pairs(df: pl.DataFrame, *, prompt: str, samples: str, scores: str, min_margin: float = 1.0,
                    keep: Sequence[str] = ()) -> pl.DataFrame:
    """Best-of-n preference pairs: per row, the best-scored sample as ``chosen`` and the
    worst as ``rejected``, when ``best - worst >= min_margin``.

    Parameters
    ----------
    df : polars.DataFrame
        Collected rows; one row per prompt.
    prompt : str
        Column of the prompt (String).
    samples : str
        List(String) column of the ``n`` samples (``generate(..., n=k)``).
    scores : str
        List(Float64 or Int64) column, one score per sample in the same order (for
        example ``judge(method="expected")`` on the exploded samples, gathered back,
        or reward-model scores). Null samples or scores are skipped.
    min_margin : float
        Minimum score difference between chosen and rejected, in score units;
        rows below it (near ties, or a single valid sample) are dropped.
    keep : list of str
        Other columns to carry over.

    Returns
    -------
    polars.DataFrame
        ``prompt``, ``chosen``, ``rejected`` (String), ``chosen_score``,
        ``rejected_score``, ``margin`` (Float64) and ``keep``; ties between samples
        are broken by the lower sample index. The pairs format DPO, SimPO and ORPO take.

    Raises
    ------
    ColumnNotFoundError
        A named column is missing.
    PlanError
        ``min_margin`` is negative.

    Notes
    -----
    Cost: no LLM calls (the samples and the scores were computed before).

    Examples
    --------
    >>> import polars as pl
    >>> df = pl.DataFrame({"q": ["x", "y"], "s": [["a", "b", "c"], ["d", "e"]], "r": [[2.0, 9.0, 5.0], [5.0, 5.5]]})
    >>> best_of_n_pairs(df, prompt="q", samples="s", scores="r", min_margin=1.0).rows()
    [('x', 'b', 'a', 9.0, 2.0, 7.0)]
    """
    _need(df, prompt, samples, scores, *keep, where="best_of_n_pairs()")
    if min_margin < 0:
        raise PlanError(f"best_of_n_pairs(min_margin=...) must be >= 0, got {min_margin}.")
    rows = []
    for row in df.iter_rows(named=True):
        pairs = [(float(s), i, t) for i, (t, s) in enumerate(zip(row[samples] or [], row[scores] or []))
                 if t is not None and s is not None and not (isinstance(s, float) and math.isnan(s))]
        if len(pairs) < 2:
            continue
        best = max(pairs, key=lambda p: (p[0], -p[1]))
        worst = min(pairs, key=lambda p: (p[0], p[1]))
        if best[1] == worst[1] or best[0] - worst[0] < min_margin:
            continue
        rows.append({"prompt": row[prompt], "chosen": best[2], "rejected": worst[2], "chosen_score": best[0],
                     "rejected_score": worst[0], "margin": best[0] - worst[0], **{k: row[k] for k in keep}})
    schema = {"prompt": pl.String, "chosen": pl.String, "rejected": pl.String, "chosen_score": pl.Float64,
              "rejected_score": pl.Float64, "margin": pl.Float64, **{k: df.schema[k] for k in keep}}
    return pl.DataFrame(rows, schema=schema)


def kto_rows(pairs: pl.DataFrame, *, prompt: str = "prompt", chosen: str = "chosen",
             rejected: str = "rejected") -> pl.DataFrame:
    """The unpaired format KTO takes (Ethayarajh et al. 2024): two rows per pair,
    ``(prompt, completion=chosen, label=True)`` and ``(prompt, completion=rejected, label=False)``.

    Parameters
    ----------
    pairs : polars.DataFrame
        Preference pairs, one row each.
    prompt, chosen, rejected : str
        Their column names.

    Returns
    -------
    polars.DataFrame
        Columns ``prompt``, ``completion``, ``label`` (Boolean); ``2 * pairs.height`` rows,
        each pair's desirable row first. Feed it to :class:`lazyllm.KTO`.

    Raises
    ------
    ColumnNotFoundError
        A named column is missing.

    Notes
    -----
    No LLM call (polars only). Paper: Ethayarajh et al. 2024, arXiv:2402.01306.

    >>> import polars as pl
    >>> kto_rows(pl.DataFrame({"prompt": ["x"], "chosen": ["good"], "rejected": ["bad"]})).rows()
    [('x', 'good', True), ('x', 'bad', False)]
    """
    _need(pairs, prompt, chosen, rejected, where="kto_rows()")
    good = pairs.select(pl.col(prompt).alias("prompt"), pl.col(chosen).alias("completion"), label=pl.lit(True))
    bad = pairs.select(pl.col(prompt).alias("prompt"), pl.col(rejected).alias("completion"), label=pl.lit(False))
    idx = pl.int_range(pl.len())
    return pl.concat([good.with_columns(_k=idx * 2), bad.with_columns(_k=idx * 2 + 1)]).sort("_k").drop("_k")


@dataclass(frozen=True)
class WinRate:
    """A win-rate report (all rates are fractions in [0, 1]).

    ``win_rate``: mean per-prompt preference for the candidate (1 win, 0 loss,
    fractional for calibrated probabilities); ``ci``: its bootstrap percentile
    interval; ``lc_win_rate`` / ``lc_ci``: the length-controlled win rate and its
    interval; ``wins``/``ties``/``losses``: verdict counts; ``n``: prompts.

    Attributes
    ----------
    win_rate : float
        In [0, 1].
    ci : tuple of float
        Bootstrap percentile interval (95% by default) of ``win_rate``.
    lc_win_rate : float
        Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval",
        arXiv:2404.04475): the preference with the answer-length difference regressed out.
    lc_ci : tuple of float
        Its bootstrap interval.
    wins, ties, losses, n : int
        Verdict counts and the number of prompts.

    Built by :func:`lazyllm.win_rate`; plain data (no LLM call).
    """

    win_rate: float
    ci: tuple[float, float]
    lc_win_rate: float
    lc_ci: tuple[float, float]
    wins: int
    ties: int
    losses: int
    n: int
    confidence: float

    def __str__(self) -> str:
        pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
        level = f"{100 * self.confidence:g}%"
        return (f"win rate {pct(self.win_rate)} ({level} CI {pct(self.ci[0])}-{pct(self.ci[1])}), "
                f"length-controlled {pct(self.lc_win_rate)} (CI {pct(self.lc_ci[0])}-{pct(self.lc_ci[1])}); "
                f"{self.wins} wins, {self.ties} ties, {self.losses} losses over {self.n} prompts")


def _lc_rates(pref: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Length-controlled win rates of a batch of samples (rows of ``pref`` and ``length``,
    shape (batch, n)): fit ``logit P(win) = theta + phi * length`` to soft labels by
    Newton's method, all samples at once (a small ridge keeps separable data finite);
    return ``sigmoid(theta)`` per sample (the mean preference where no length differs)."""
    pref, length = np.atleast_2d(pref), np.atleast_2d(length)
    x = np.stack([np.ones_like(length), length], axis=2)  # (batch, n, 2)
    w = np.zeros((pref.shape[0], 2))
    ridge = 1e-3 * np.eye(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.einsum("bnk,bk->bn", x, w)))
        grad = np.einsum("bnk,bn->bk", x, pref - p) - w @ ridge
        hess = np.einsum("bnk,bn,bnl->bkl", x, p * (1 - p), x) + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        w = w + step
        if np.abs(step).max() < 1e-9:
            break
    rates = 1 / (1 + np.exp(-w[:, 0]))
    flat = ~length.any(axis=1)  # no length difference: the model is the intercept alone
    rates[flat] = pref[flat].mean(axis=1)
    return rates


def _lc_rate(pref: np.ndarray, length: np.ndarray) -> float:
    """The length-controlled win rate of one sample (see :func:`_lc_rates`)."""
    return float(_lc_rates(pref, length)[0])


def win_rate(df: pl.DataFrame, *, preference: str, candidate_length: str | None = None,
             baseline_length: str | None = None, verdict: str | None = None, confidence: float = 0.95,
             resamples: int = 2000, seed: int = 0) -> WinRate:
    """Win rate of a candidate (``a``) over a baseline (``b``) from pairwise preferences.

    Parameters
    ----------
    df : polars.DataFrame
        One row per held-out prompt, judged with ``judge_pairwise(a=<candidate>,
        b=<baseline>)`` (both orders, calibrated).
    preference : str
        Column with the candidate's preference per prompt, in [0, 1]: for a
        calibrated verdict ``(1 + margin) / 2`` (``pl.col("w_margin")`` mapped so),
        or 1/0.5/0 for win/tie/loss. Null rows (failed judgements) are dropped.
    candidate_length, baseline_length : str, optional
        Columns with the two answers' lengths (characters or tokens) for the
        length-controlled rate; without them it equals the raw rate.
    verdict : str, optional
        Column of "a"/"b"/"tie" verdicts, counted in the report.
    confidence : float
        Level of the bootstrap percentile intervals (default 0.95).
    resamples : int
        Bootstrap resamples of the prompts (default 2000).
    seed : int
        Seed of the bootstrap (numpy ``default_rng``).

    Returns
    -------
    WinRate
        Raw and length-controlled win rates with their intervals and the counts.

    Raises
    ------
    ColumnNotFoundError
        A named column is missing.
    PlanError
        No rows with a preference, or a preference outside [0, 1].

    Notes
    -----
    Length control (Dubois et al. 2024): ``logit P(win) = theta + phi * tanh(d / sd(d))``
    with ``d`` the length difference (candidate minus baseline), fitted to the
    per-prompt preferences; the length-controlled rate is ``sigmoid(theta)``, the
    predicted preference at equal length. The paper adds instruction difficulty
    terms fitted across many models; with one model pair only the length term is
    identifiable. The interval bootstraps prompts (percentile method). Cost: no LLM
    calls; about ``resamples`` small logistic fits.

    Examples
    --------
    >>> import polars as pl
    >>> df = pl.DataFrame({"p": [1.0, 1.0, 0.0, 0.5], "la": [10, 50, 20, 30], "lb": [10, 20, 30, 30]})
    >>> r = win_rate(df, preference="p", candidate_length="la", baseline_length="lb", resamples=200)
    >>> round(r.win_rate, 3), r.n, r.ci[0] <= r.win_rate <= r.ci[1]
    (0.625, 4, True)
    """
    cols = [preference, *(c for c in (candidate_length, baseline_length, verdict) if c is not None)]
    _need(df, *cols, where="win_rate()")
    if (candidate_length is None) != (baseline_length is None):
        raise PlanError("win_rate() needs both candidate_length= and baseline_length= (or neither).")
    data = df.filter(pl.col(preference).is_not_null())
    if data.height == 0:
        raise PlanError("win_rate(): no row has a preference; check the pairwise judge's error column.")
    pref = data[preference].cast(pl.Float64).to_numpy()
    if (pref < 0).any() or (pref > 1).any():
        raise PlanError(f"win_rate(): {preference!r} must be a preference in [0, 1]; map a calibrated margin m "
                        "to (1 + m) / 2.")
    if candidate_length is not None:
        diff = (data[candidate_length].cast(pl.Float64) - data[baseline_length].cast(pl.Float64)).to_numpy()
        sd = float(diff.std())
        length = np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    else:
        length = np.zeros_like(pref)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pref), size=(resamples, len(pref)))
    raw = pref[idx].mean(axis=1)
    lc = _lc_rates(pref[idx], length[idx])
    alpha = (1 - confidence) / 2
    q = lambda v: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha)))  # noqa: E731
    if verdict is not None:
        counts = data[verdict].value_counts()
        count = dict(zip(counts[verdict].to_list(), counts["count"].to_list()))
        wins, ties, losses = count.get("a", 0), count.get("tie", 0), count.get("b", 0)
    else:
        wins, ties, losses = int((pref > 0.5).sum()), int((pref == 0.5).sum()), int((pref < 0.5).sum())
    return WinRate(win_rate=float(pref.mean()), ci=q(raw), lc_win_rate=_lc_rate(pref, length), lc_ci=q(lc),
                   wins=wins, ties=ties, losses=losses, n=len(pref), confidence=confidence)
