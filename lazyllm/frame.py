"""The lazy Frame: a thin, immutable handle over a plan node.

Every method returns a new Frame; nothing runs before :meth:`Frame.collect`.
Relational methods take polars expressions and are executed by polars; LLM methods
add plan nodes that the planner batches, caches and runs.

>>> import polars as pl, lazyllm
>>> f = lazyllm.from_dicts([{"q": "2+2?"}, {"q": "Capital of France?"}])
>>> f = f.generate("a", lazyllm.TestModel(), prompt="Answer: {{ q }}")
>>> f.columns
['q', 'a', 'a_error']
>>> f.filter(pl.col("q").str.contains("France")).collect(progress=False)["a"].to_list()
['echo[0|greedy]: Answer: Capital of France?']
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from lazyllm.core.errors import ParameterError, PlanError
from lazyllm.core.protocols import ModelSpec, SamplingParams
from lazyllm.planner.budget import Budget, check_prices, over_budget
from lazyllm.planner import executor as _exec
from lazyllm.planner import nodes as N
from lazyllm.planner.explain import render_plan, rule_lines, savings
from lazyllm.planner.optimizer import optimize, rule_savings
from lazyllm.planner.templates import check_columns
from lazyllm.planner.train import TrainedModel
from lazyllm.planner.workspace import Workspace

from . import prompts
from . import validation as V
from .cards import data_card
from .hub import publish, save_dataset, sink_hub
from .models import as_model_spec
from .training import TrainedModelHandle, TrainSpec

__all__ = ["Frame", "concat", "collect_all", "llm_predicate", "LLMPredicate", "sql"]

WorkspaceLike = "str | os.PathLike[str] | Workspace | None"


def _exprs(items: Iterable[Any], named: Mapping[str, Any]) -> tuple[pl.Expr, ...]:
    out: list[pl.Expr] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_exprs(item, {}))
        elif isinstance(item, str):
            out.append(pl.col(item))
        elif isinstance(item, pl.Expr):
            out.append(item)
        elif isinstance(item, pl.Series):
            raise PlanError("Pass polars expressions (pl.col(...), pl.lit(...)), not a Series: a Frame is lazy.")
        else:
            out.append(pl.lit(item))
    for name, value in named.items():
        expr = value if isinstance(value, pl.Expr) else pl.lit(value)
        out.append(expr.alias(name))
    if not out:
        raise PlanError("Expected at least one column name or polars expression.")
    return tuple(out)


def _names(items: Iterable[Any], what: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_names(item, what))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise PlanError(f"{what} takes column names (str), got {type(item).__name__}.")
    return tuple(out)


class Frame:
    """A lazy frame: an immutable handle over a logical plan (polars' ``LazyFrame`` idea,
    with LLM operators).

    Build one with a source (:func:`lazyllm.read_parquet`, :func:`lazyllm.from_polars`,
    ...) and chain operators: each returns a new Frame and runs nothing. Relational
    operators take polars expressions and are run by polars; LLM operators
    (:meth:`generate`, :meth:`judge`, :meth:`judge_pairwise`, :meth:`reward`,
    ``filter(llm_predicate(...))``) add columns computed by a model. :meth:`explain`
    shows the optimized plan with its estimated LLM calls and tokens; :meth:`collect`
    runs it and returns a ``polars.DataFrame``; :meth:`train` turns a frame into a lazy
    trained model.

    Parameters
    ----------
    node : lazyllm.planner.nodes.PlanNode
        The plan (built by the sources and operators; users do not call this).

    Notes
    -----
    Cost: building a frame validates the plan against the schema (columns a template
    or expression reads must exist) and calls no model; a frame's fingerprint hashes
    its sources' content once.

    Examples
    --------
    >>> import polars as pl, lazyllm
    >>> frame = lazyllm.from_dicts([{"q": "2+2?"}, {"q": "3+3?"}]).filter(pl.col("q") != "3+3?")
    >>> frame.columns
    ['q']
    >>> frame.collect(progress=False).height
    1
    """

    __slots__ = ("_node",)

    def __init__(self, node: N.PlanNode) -> None:
        if not isinstance(node, N.PlanNode):
            raise PlanError(f"Frame wraps a plan node, got {type(node).__name__}; use lazyllm.from_polars(...).")
        object.__setattr__(self, "_node", node)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Frame is immutable: every method returns a new Frame.")

    # -- introspection -------------------------------------------------------------------
    @property
    def plan(self) -> N.PlanNode:
        """The root plan node (:class:`lazyllm.planner.nodes.PlanNode`, frozen): what
        ``collect()`` executes and ``explain()`` prints. No cost."""
        return self._node

    @property
    def schema(self) -> pl.Schema:
        """Output schema (``polars.Schema``: column name -> dtype), inferred from the plan
        without running anything: LLM columns are ``String`` (``Float64`` for expected
        judge scores), with their companion ``<column>_error`` columns. No LLM call."""
        return self._node.schema()

    @property
    def columns(self) -> list[str]:
        """Output column names, in order (from :attr:`schema`; no LLM call)."""
        return self._node.columns

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the whole plan: hex SHA-256 (64 characters) over the node
        types, their canonical parameters (performance-only settings such as batch sizes
        excluded), the model specs' identities and the sources' content (file bytes are
        hashed when a reader builds the plan). Stable across processes, machines and hash
        seeds; it keys the run logs and data cards. No LLM call."""
        return self._node.fingerprint

    def __repr__(self) -> str:
        return f"<lazyllm.Frame {self.fingerprint[:10]}: {len(self.columns)} columns, not collected>\n" + render_plan(
            self._node, fingerprints=False
        )

    def _wrap(self, node: N.PlanNode) -> "Frame":
        return Frame(node)

    # -- relational (polars) -------------------------------------------------------------
    def select(self, *exprs: Any, **named: Any) -> "Frame":
        """Keep or compute columns (``polars.LazyFrame.select``).

        Parameters
        ----------
        *exprs : str or polars.Expr
            Column names or expressions, in output order.
        **named : polars.Expr
            Expressions named by keyword (``n=pl.col("q").str.len_chars()``).

        Returns
        -------
        Frame
            A new frame with exactly these columns (rows unchanged).

        Raises
        ------
        ColumnNotFoundError
            An expression reads a column the frame does not have (raised here).

        Notes
        -----
        No LLM call. Projection pruning: an LLM column that no selected expression reads
        is never computed, and filters on the columns it keeps move below LLM nodes.
        """
        return self._wrap(N.Select(children=(self._node,), exprs=_exprs(exprs, named)))

    def with_columns(self, *exprs: Any, **named: Any) -> "Frame":
        """Add or replace columns (``polars.LazyFrame.with_columns``).

        Parameters
        ----------
        *exprs : polars.Expr
            Expressions; each output is named by its expression (``.alias(...)``).
        **named : polars.Expr
            Expressions named by keyword (``big=pl.col("len") > 90``).

        Returns
        -------
        Frame
            The same rows with the new or replaced columns.

        Raises
        ------
        ColumnNotFoundError
            An expression reads a column the frame does not have (raised here).

        Notes
        -----
        No LLM call. An elementwise derivation that reads no LLM output moves below the
        LLM nodes with a filter that reads it (derivation pushdown); a non-elementwise one
        (``pl.col("x").mean()``) needs every row and never moves.
        """
        return self._wrap(N.WithColumns(children=(self._node,), exprs=_exprs(exprs, named)))

    def filter(self, *predicates: "pl.Expr | LLMPredicate") -> "Frame":
        """Keep rows where all predicates are true, applied in order.

        A predicate is a boolean polars expression (``pl.col("score") >= 7``, run by
        polars) or an LLM predicate (:func:`lazyllm.llm_predicate`: the model answers
        yes/no per row, constrained; rows answered "no" or whose request failed are
        dropped). The optimizer runs cheap polars predicates before LLM ones when
        they read no LLM output.

        Parameters
        ----------
        *predicates : polars.Expr or LLMPredicate
            Boolean expressions and/or LLM predicates; all must hold (a conjunction).

        Returns
        -------
        Frame
            The rows for which every predicate is true, in their order.

        Raises
        ------
        ColumnNotFoundError
            A predicate reads a column the frame does not have.
        PlanError
            No predicate, or a value that is neither an expression nor an LLM predicate.

        Notes
        -----
        Cost: a polars predicate makes no LLM call; each conjunct that reads no LLM
        output and is elementwise moves below the LLM nodes (predicate pushdown:
        Hellerstein & Stonebraker, "Predicate Migration", 1993), so their requests are
        made only for the rows it keeps. An LLM predicate makes one constrained call per
        distinct rendered request (cached).
        """
        if not predicates:
            raise PlanError("filter() needs at least one predicate, for example pl.col('score') >= 7.")
        node = self._node
        for p in predicates:
            if isinstance(p, LLMPredicate):
                node = N.LLMFilter(children=(node,), model=p.model, prompt=p.prompt, system=p.system,
                                   sampling=p.sampling, aliases=p.aliases)
            elif isinstance(p, pl.Expr):
                node = N.Filter(children=(node,), predicate=p)
            else:
                raise PlanError(f"filter() takes polars expressions or lazyllm.llm_predicate(...), got {type(p).__name__}.")
        return self._wrap(node)

    def head(self, n: int = 5) -> "Frame":
        """The first ``n`` rows (``limit`` is the same method).

        Parameters
        ----------
        n : int
            Rows to keep (>= 0).

        Returns
        -------
        Frame
            At most ``n`` rows, in order.

        Raises
        ------
        PlanError
            ``n`` is negative.

        Notes
        -----
        Limit pushdown: when every operation between the limit and the LLM work is row by
        row, the LLM nodes run in waves and stop once ``n`` rows are known, so about ``n``
        rows' requests are made instead of all of them; ``sort(...).head(n)`` by input
        columns becomes a top-k below the LLM nodes.
        """
        return self._wrap(N.Head(children=(self._node,), n=n))

    limit = head

    def sort(self, by: Any, *more_by: Any, descending: bool | Sequence[bool] = False, nulls_last: bool = False) -> "Frame":
        """Stable sort by columns or expressions (``polars.LazyFrame.sort``).

        Parameters
        ----------
        by, *more_by : str or polars.Expr
            Sort keys, most significant first.
        descending : bool or sequence of bool
            One flag for all keys, or one per key.
        nulls_last : bool
            Put nulls after the other values.

        Returns
        -------
        Frame
            The same rows, reordered (ties keep their order).

        Raises
        ------
        PlanError
            The number of ``descending`` flags differs from the number of keys.

        Notes
        -----
        No LLM call; it needs every row, so a limit above it cannot run in waves unless
        the keys read no LLM output (then ``sort(...).head(n)`` is a top-k below the LLM
        nodes).
        """
        keys = _exprs((by, *more_by), {})
        desc = (descending,) * len(keys) if isinstance(descending, bool) else tuple(descending)
        if len(desc) != len(keys):
            raise PlanError(f"sort(): {len(keys)} keys but {len(desc)} descending flags.")
        return self._wrap(N.Sort(children=(self._node,), by=keys, descending=desc, nulls_last=nulls_last))

    def unique(self, subset: str | Sequence[str] | None = None, *, keep: str = "first") -> "Frame":
        """Drop duplicate rows, keeping one per group, in order (``polars.LazyFrame.unique``
        with ``maintain_order=True``).

        Parameters
        ----------
        subset : str or sequence of str, optional
            Columns that define a duplicate (default: all).
        keep : {"first", "last", "any", "none"}
            Which row of a group to keep.

        Returns
        -------
        Frame

        Raises
        ------
        ColumnNotFoundError
            A ``subset`` column does not exist.
        PlanError
            An unknown ``keep``.

        Notes
        -----
        No LLM call. With a ``subset`` of columns no LLM node writes and ``keep`` first,
        last or none, it moves below the LLM nodes (their requests are made for the kept
        rows only).
        """
        sub = None if subset is None else _names([subset], "unique(subset)")
        return self._wrap(N.Unique(children=(self._node,), subset=sub, keep=keep))

    def join(
        self,
        other: "Frame",
        on: Any = None,
        how: str = "inner",
        *,
        left_on: Any = None,
        right_on: Any = None,
        suffix: str = "_right",
    ) -> "Frame":
        """Join with another Frame (``polars.LazyFrame.join``); left row order is kept.

        Parameters
        ----------
        other : Frame
        on, left_on, right_on : str, polars.Expr or sequence of them
            Join keys (``on`` for both sides).
        how : {"inner", "left", "right", "full", "semi", "anti", "cross"}
        suffix : str
            Appended to right-hand column names that clash.

        Returns
        -------
        Frame

        Raises
        ------
        ColumnNotFoundError
            A key does not exist on its side.
        PlanError
            ``other`` is not a Frame, or an unknown ``how``.

        Notes
        -----
        No LLM call of its own. A filter above the join moves into the side whose
        columns it reads; a semi or anti join on input keys moves below the LLM nodes of
        the left side.
        """
        if not isinstance(other, Frame):
            raise PlanError(f"join() takes a lazyllm Frame, got {type(other).__name__}; wrap data with lazyllm.from_polars().")
        as_tuple = lambda v: None if v is None else _exprs([v], {})  # noqa: E731
        return self._wrap(
            N.Join(children=(self._node, other._node), how=how, on=as_tuple(on), left_on=as_tuple(left_on),
                   right_on=as_tuple(right_on), suffix=suffix)
        )

    def concat(self, *others: "Frame", how: str = "vertical") -> "Frame":
        """Append the rows of other frames: the same as ``lazyllm.concat([self, *others], how=how)``.

        Parameters
        ----------
        *others : Frame
            Frames whose rows follow this frame's.
        how : str
            As in :func:`lazyllm.concat` (``"vertical"``, ``"diagonal"``, ...).

        Returns
        -------
        Frame

        Raises
        ------
        PlanError
            A value that is not a Frame, an unknown ``how``, or schemas that ``how`` cannot
            combine (see :func:`lazyllm.concat`).

        Notes
        -----
        No LLM call of its own; a filter above it moves into each branch.
        """
        return concat([self, *others], how=how)

    def explode(self, columns: str | Sequence[str], *more: str) -> "Frame":
        """One row per element of the given list column(s) (``polars.LazyFrame.explode``).

        Parameters
        ----------
        columns, *more : str or sequence of str
            List columns to explode together.

        Returns
        -------
        Frame

        Raises
        ------
        ColumnNotFoundError
            A column does not exist.

        Notes
        -----
        No LLM call; it changes the row count, so limits above it do not move below it.
        """
        return self._wrap(N.Explode(children=(self._node,), names=_names([columns, *more], "explode()")))

    def rename(self, mapping: Mapping[str, str]) -> "Frame":
        """Rename columns.

        Parameters
        ----------
        mapping : dict of str to str
            Old name -> new name.

        Returns
        -------
        Frame

        Raises
        ------
        ColumnNotFoundError
            An old name does not exist.

        Notes
        -----
        No LLM call; filters move through it (rewritten to the old names).
        """
        check_columns(mapping, self.columns, where="rename()")
        return self._wrap(N.Rename(children=(self._node,), mapping=tuple(mapping.items())))

    def drop(self, *columns: str | Sequence[str]) -> "Frame":
        """Drop columns.

        Parameters
        ----------
        *columns : str or sequence of str

        Returns
        -------
        Frame

        Raises
        ------
        ColumnNotFoundError
            A column does not exist.

        Notes
        -----
        Dropping an LLM column (and its error column) anywhere above its node means it is
        never computed (projection pruning): no request is made for it.
        """
        names = _names(columns, "drop()")
        check_columns(names, self.columns, where="drop()")
        return self._wrap(N.Drop(children=(self._node,), names=names))

    def sample(self, n: int | None = None, *, fraction: float | None = None, seed: int = 0,
               with_replacement: bool = False, shuffle: bool = False) -> "Frame":
        """A seeded random sample of ``n`` rows or a ``fraction`` of rows (``polars.DataFrame.sample``).

        Parameters
        ----------
        n : int, optional
            Rows to draw (give ``n`` or ``fraction``).
        fraction : float, optional
            Fraction of rows to draw.
        seed : int
            The same seed and data give the same sample.
        with_replacement, shuffle : bool
            As in polars.

        Returns
        -------
        Frame

        Raises
        ------
        PlanError
            Neither or both of ``n`` and ``fraction``, or a negative value.

        Notes
        -----
        No LLM call; a sample that reads no LLM output moves below the LLM nodes, so
        requests are made for the sampled rows only.
        """
        return self._wrap(N.Sample(children=(self._node,), n=n, fraction=fraction, seed=seed,
                                   with_replacement=with_replacement, shuffle=shuffle))

    def split(self, fractions: Mapping[str, float], *, seed: int = 0) -> dict[str, "Frame"]:
        """Split rows at random into named parts, e.g. ``{"train": 0.9, "validation": 0.1}``.

        Parameters
        ----------
        fractions : dict of str to float
            Part name -> fraction (each > 0, summing to 1).
        seed : int
            The same seed and data give the same parts.

        Returns
        -------
        dict of str to Frame
            Parts that are disjoint, cover every row, keep the original order.

        Raises
        ------
        PlanError
            No part, a fraction that is not a positive number (``ParameterError``), or
            fractions that do not sum to 1.

        Notes
        -----
        No LLM call; a part that gets no row warns (``EmptyInputWarning``).
        """
        if not fractions:
            raise PlanError("split() needs at least one part, e.g. {'train': 0.9, 'validation': 0.1}.")
        if not isinstance(fractions, Mapping):
            raise PlanError(f"split() takes a dict of part name -> fraction, got {type(fractions).__name__}.")
        fr = V.check_split(fractions, V.known_rows(self._node))
        return {name: self._wrap(N.SplitPart(children=(self._node,), fractions=fr, part=name, seed=seed))
                for name, _ in fr}

    # -- LLM operators -------------------------------------------------------------------
    def generate(
        self,
        column: str,
        model: Any = None,
        *,
        prompt: str | None = None,
        system: str | None = None,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int = 0,
        stop: str | Sequence[str] | None = None,
        choices: Sequence[str] | None = None,
        json_schema: Any = None,
        error_column: str | None = None,
        overwrite: bool = False,
        messages: str | None = None,
        append_to: str | None = None,
        reasoning: str = "drop",
    ) -> "Frame":
        """Generate ``column`` with an LLM, one prompt (or conversation) per row.

        Parameters
        ----------
        column : str
            Output column: String when ``n == 1``; List(String) of ``n`` samples
            (sample ``i`` at index ``i``) when ``n > 1``. Use ``.explode(column)``
            for one row per sample.
        model : model spec or str, optional
            e.g. ``lazyllm.Transformers("smollm2-135m-instruct")`` (the default).
        prompt : str, optional
            Jinja2 template over the row's columns, e.g. ``"Answer: {{ question }}"``.
            Sent as the user message; chat models get their chat template applied.
            Required unless ``messages`` is given; with ``messages`` it is a final user
            turn after the conversation (none when omitted).
        system : str, optional
            Jinja2 template of a system message (sent first, before a conversation).
        n : int
            Samples per row; sample ``i`` uses a seed derived from ``seed`` and ``i``.
        temperature, top_p : float
            Sampling; ``temperature=0`` (default) is greedy decoding.
        max_tokens : int
            Maximum generated tokens per sample.
        seed : int
            Base seed: the same seed and inputs give the same text.
        stop : str or list of str, optional
            Generation ends before the first stop string.
        choices : list of str, optional
            The answer is exactly one of these labels (constrained decoding).
        json_schema : pydantic model class, dict or JSON text, optional
            The answer is JSON matching the schema (constrained decoding); the column
            is a Struct of the parsed fields. The constraint is part of every
            request's fingerprint. An answer that still fails to parse (for example
            cut by ``max_tokens``) is null, with the reason in the error column.
        error_column : str, optional
            Where per-row errors go (default ``f"{column}_error"``; null on success).
        overwrite : bool
            Replace ``column`` (and the error column) if the frame already has them;
            without it that is an error.
        messages : str, optional
            A conversation column: per row a list of ``{role, content}`` structs
            (roles ``system``, ``user``, ``assistant``), as the Hub's chat datasets store
            them. The request is ``system`` (if given), the conversation, then
            ``prompt`` (if given) as a user turn; the model's chat template is applied
            and the whole conversation is part of the request's fingerprint (cache key).
            A null or empty conversation sends nothing: the row's output is null and
            its error names the column.
        append_to : str, optional
            Also write this conversation column: the request's messages without the
            system message, then the answer as an ``assistant`` message (null when the
            row failed). Pass it as ``messages=`` of the next ``generate`` for the next
            turn of a multi-turn dialogue. Needs ``n == 1``.
        reasoning : {"drop", "keep"}
            What to do with a reasoning model's trace (``<think>...</think>`` before
            the answer, or a server's ``reasoning_content``). The trace is never in
            ``column``, so judges, filters and later prompts read the answer alone.
            ``"keep"`` adds ``f"{column}_reasoning"`` (String; null when the answer had
            no trace), cached with the answer; ``"drop"`` (the default, so existing
            plans keep their columns and fingerprints) adds no column; the trace stays
            in the cache either way, so switching to ``"keep"`` costs no LLM call.

        Returns
        -------
        Frame
            Every input row and column in order, plus ``column``, the reasoning and
            ``append_to`` columns when asked, and the error column.

        Raises
        ------
        ColumnNotFoundError
            The template names a column the frame does not have (raised here, before
            any model is loaded).
        TemplateError
            The template does not parse.
        ParameterError
            A parameter of the wrong type or out of range (see :mod:`lazyllm.validation`).
        PlanError
            ``json_schema`` is not a valid JSON Schema; an output column exists already;
            neither ``prompt`` nor ``messages``; ``messages`` is not a column of lists of
            ``{role, content}`` structs (here), or a message has another role or a
            null content (at ``collect()``/``explain()``, before any model is loaded).

        Notes
        -----
        Cost: ``n`` LLM calls per row, minus cache hits and duplicate prompts.
        A row whose generation fails keeps a null and a message in the error column.
        Reasoning traces count in the output tokens (``max_tokens`` bounds trace and
        answer together); the run's stats report ``reasoning_tokens`` apart.

        Examples
        --------
        >>> import lazyllm
        >>> chat = lazyllm.from_dicts([{"conv": [{"role": "user", "content": "Hi"}]}])
        >>> out = chat.generate("reply", lazyllm.TestModel(), messages="conv", append_to="conv2").collect(progress=False)
        >>> [m["role"] for m in out["conv2"][0]]
        ['user', 'assistant']
        """
        sampling = V.sampling("generate", temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                              stop=stop)
        if prompt is None and messages is None:
            raise ParameterError("generate() needs prompt=... (a Jinja2 template, e.g. 'Answer: {{ question }}') or "
                                 "messages=... (a column of chat messages).")
        node = N.Generate(children=(self._node,), column=V.column_name("generate", "column", column),
                          model=as_model_spec(model), prompt=prompt or "", system=system,
                          n=V.integer("generate", "n", n, low=1), sampling=sampling, error_column=error_column or "",
                          choices=V.choices("generate", choices), json_schema=canonical_json_schema(json_schema),
                          reasoning=reasoning,
                          conversation=None if messages is None else V.column_name("generate", "messages", messages),
                          append_to=None if append_to is None else V.column_name("generate", "append_to", append_to))
        V.check_node("generate", self.columns, node, overwrite)
        return self._wrap(node)

    def judge(
        self,
        column: str,
        model: Any = None,
        *,
        prompt: str | None = None,
        system: str | None = None,
        question: str | None = None,
        answer: str | None = None,
        reference: str | None = None,
        scale: tuple[int, int] = (1, 10),
        rationale: bool = False,
        method: str = "argmax",
        temperature: float = 0.0,
        seed: int = 0,
        max_tokens: int | None = None,
        error_column: str | None = None,
        overwrite: bool = False,
    ) -> "Frame":
        """Grade each row with an LLM judge: a score in ``scale`` (single-answer grading).

        ``method="argmax"`` (default): the answer is constrained to the integers of
        the scale (with ``rationale``, to JSON holding a short rationale and the
        score), never free text parsed by a regex: the judge's most probable score.
        ``method="expected"``: the expectation of the score under the judge's
        distribution over the scale's tokens (G-Eval: Liu et al. 2023, "G-Eval: NLG
        Evaluation using GPT-4 with Better Human Alignment"), which keeps what a
        small judge knows when its argmax is the same for every row; the
        distribution is kept in ``f"{column}_probs"``. The default prompts are
        MT-Bench's single-answer grading prompts (Zheng et al. 2023, "Judging
        LLM-as-a-Judge with MT-Bench and Chatbot Arena"), see :mod:`lazyllm.prompts`;
        with ``reference`` the reference-guided one.

        Parameters
        ----------
        column : str
            Output column: Int64 (argmax) or Float64 in ``[lo, hi]`` (expected);
            ``f"{column}_rationale"`` (String) too with ``rationale``;
            ``f"{column}_probs"`` (List(Float64), ``hi - lo + 1`` probabilities,
            score ``lo`` first, summing to 1) with ``method="expected"``.
        question, answer, reference : str, optional
            Columns shown to the judge as ``{{ question }}``, ``{{ answer }}`` and
            ``{{ reference }}`` (the default prompt needs question and answer).
        prompt, system : str, optional
            Your own Jinja2 templates (they may read any column and the variables above).
            The default system prompt states the scale.
        scale : (int, int)
            Lowest and highest score.
        method : {"argmax", "expected"}
            The constrained most probable score, or the probability-weighted one.
            ``"expected"`` needs an engine that returns log-probabilities
            (transformers, vLLM, OpenAI-compatible servers with ``logprobs``) and
            takes no ``rationale``.
        max_tokens : int, optional
            Default 4 (a score) or 256 (rationale and score).
        overwrite : bool
            Replace output columns the frame already has (otherwise a PlanError).

        Returns
        -------
        Frame
            The same rows plus ``<column>`` (Int64 score with ``method="argmax"``, Float64
            expected score with ``"expected"``, null where the request failed), ``<column>_error``,
            ``<column>_probs`` (the score distribution, ``"expected"`` only) and
            ``<column>_rationale`` when a rationale is asked for.

        Raises
        ------
        PlanError
            The default prompt without ``question``/``answer`` columns, a bad scale
            or method, or ``method="expected"`` with ``rationale``.
        ColumnNotFoundError
            A mapped column or a template variable is not in the frame.
        PlanError
            ``method="expected"`` on an OpenAI-compatible model whose provider gives
            no log-probabilities (when the plan is built, before any call).

        Notes
        -----
        Cost: 1 LLM call per row (cached like any request); with
        ``method="expected"`` the call is a prefill (plus one token for a scale with
        two-digit scores on a digit-splitting tokenizer), no sampling loop.

        Examples
        --------
        >>> import lazyllm
        >>> judge = lazyllm.TestModel(distributions=(("Paris", (("8", 0.5), ("10", 0.5))),))
        >>> f = lazyllm.from_dicts([{"q": "Capital of France?", "a": "Paris"}])
        >>> df = f.judge("score", judge, question="q", answer="a", method="expected").collect(progress=False)
        >>> df["score"].to_list(), df["score_probs"].to_list()[0][7:]
        ([9.0], [0.5, 0.0, 0.5])
        """
        lo, hi = V.scale(scale)
        if prompt is None:
            if question is None or answer is None:
                raise PlanError("judge() with the default prompt needs question='<column>' and answer='<column>' "
                                "(and optionally reference='<column>'); or pass your own prompt=....")
            prompt = prompts.JUDGE_REFERENCE_PROMPT if reference is not None else prompts.JUDGE_PROMPT
        if system is None:
            base = prompts.JUDGE_REFERENCE_SYSTEM if reference is not None else prompts.JUDGE_SYSTEM
            system = base.format(lo=lo, hi=hi)
        sampling = V.sampling("judge", temperature=temperature, seed=seed,
                              max_tokens=(256 if rationale else 4) if max_tokens is None else max_tokens)
        node = N.Judge(children=(self._node,), column=V.column_name("judge", "column", column),
                       model=as_model_spec(model), prompt=prompt, system=system,
                       sampling=sampling, aliases=_aliases(question=question, answer=answer, reference=reference),
                       scale=(int(lo), int(hi)), rationale=bool(rationale), method=method,
                       error_column=error_column or "")
        V.check_node("judge", self.columns, node, overwrite)
        return self._wrap(node)

    def judge_pairwise(
        self,
        column: str,
        model: Any = None,
        *,
        a: str,
        b: str,
        question: str | None = None,
        prompt: str | None = None,
        system: str | None = None,
        swap: bool = True,
        method: str = "calibrated",
        tie_margin: float | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        max_tokens: int = 4,
        error_column: str | None = None,
        overwrite: bool = False,
    ) -> "Frame":
        """Compare two answers per row: ``column`` is ``"a"``, ``"b"`` or ``"tie"``.

        Each pair is judged in both orders (a first, then b first) and the verdict
        is one of MT-Bench's letters "A", "B", "C" (tie). Position bias is removed
        by default with balanced position calibration (Wang et al. 2023, "Large
        Language Models are not Fair Evaluators"): the judge's probability of
        preferring each answer is averaged over the two positions it was shown in,
        and ``margin = p_a - p_b`` (in [-1, 1]) decides: ``"a"`` above
        ``tie_margin``, ``"b"`` below ``-tie_margin``, else ``"tie"``.
        ``method="strict"`` keeps the older rule: the constrained letter of each
        order, and only a verdict both orders agree on counts (Zheng et al. 2023,
        MT-Bench / Chatbot Arena).

        Parameters
        ----------
        a, b : str
            Columns holding the two answers (shown as ``{{ answer_a }}`` / ``{{ answer_b }}``).
        question : str, optional
            Column shown as ``{{ question }}`` (needed by the default prompt).
        swap : bool
            Judge both orders (default). False: one call per row, no bias check.
        method : {"calibrated", "strict"}
            Probability-averaged verdicts (default; needs an engine that returns
            log-probabilities), or both-orders agreement of argmax letters.
        tie_margin : float, optional
            Calibrated verdicts within ``[-tie_margin, tie_margin]`` are ties;
            default 0.1 (:data:`lazyllm.planner.nodes.TIE_MARGIN`): a pair is only
            decided when the averaged preference differs by more than 10
            percentage points. Threshold ``f"{column}_margin"`` yourself for a
            stricter cut. Ignored by ``"strict"``.
        overwrite : bool
            Replace output columns the frame already has (otherwise a PlanError).

        Returns
        -------
        Frame
            Input rows plus ``column`` (String), ``f"{column}_margin"`` (Float64,
            positive favours ``a``), ``f"{column}_verdicts"`` (List(String): the
            most probable letter of each order) and the error column.

        Raises
        ------
        PlanError
            Bad method or tie_margin, the default prompt without ``question``,
            ``method="calibrated"`` on an OpenAI-compatible model whose provider
            gives no log-probabilities (when the plan is built, before any call),
            ``a == b`` (every verdict would be a tie), or an output column exists.

        Notes
        -----
        Cost: 2 LLM calls per row (1 with ``swap=False``); calibrated calls are a
        prefill each, no sampling loop.

        Examples
        --------
        A judge that prefers whatever it sees first, a bit less when it is worse:

        >>> import lazyllm
        >>> biased = lazyllm.TestModel(distributions=(
        ...     ("A's Answer]\\ngood", (("A", 0.9), ("B", 0.1))),
        ...     ("A's Answer]\\nbad", (("A", 0.6), ("B", 0.4))),
        ... ))
        >>> f = lazyllm.from_dicts([{"q": "2+2?", "x": "good", "y": "bad"}])
        >>> df = f.judge_pairwise("w", biased, a="x", b="y", question="q").collect(progress=False)
        >>> df["w"][0], round(df["w_margin"][0], 2), df["w_verdicts"][0].to_list()
        ('a', 0.3, ['A', 'A'])
        """
        if prompt is None:
            if question is None:
                raise PlanError("judge_pairwise() with the default prompt needs question='<column>'; "
                                "or pass your own prompt=... reading {{ answer_a }} and {{ answer_b }}.")
            prompt = prompts.PAIRWISE_PROMPT
        V.check_pairwise(V.column_name("judge_pairwise", "a", a), V.column_name("judge_pairwise", "b", b))
        sampling = V.sampling("judge_pairwise", temperature=temperature, max_tokens=max_tokens, seed=seed)
        node = N.PairwiseJudge(children=(self._node,), column=column, model=as_model_spec(model), prompt=prompt,
                               system=prompts.PAIRWISE_SYSTEM if system is None else system, sampling=sampling,
                               aliases=_aliases(question=question), a=a, b=b, swap=bool(swap), method=method,
                               tie_margin=float(N.TIE_MARGIN if tie_margin is None else tie_margin),
                               error_column=error_column or "")
        V.check_node("judge_pairwise", self.columns, node, overwrite)
        return self._wrap(node)

    def reward(
        self,
        column: str,
        reward_model: Any,
        *,
        response: str,
        question: str | None = None,
        prompt: str | None = None,
        system: str | None = None,
        error_column: str | None = None,
        overwrite: bool = False,
    ) -> "Frame":
        """Score each row with a sequence-classification reward model (a Float64 column).

        The reward model reads the conversation ``[system], user: prompt, assistant:
        response`` with its chat template and returns one scalar (higher is better):
        the Bradley-Terry reward of InstructGPT (Ouyang et al. 2022, "Training language
        models to follow instructions with human feedback"), the format TRL's
        ``RewardTrainer`` trains on. Use it to rank samples for best-of-n
        (:func:`lazyllm.best_of_n_pairs`).

        Parameters
        ----------
        column : str
            Output column (Float64; null with a message in the error column on failure).
        reward_model : RewardModel handle, model spec or str
            ``frame.train(lazyllm.RewardModel(...))`` (trained first, lazily, cached by
            fingerprint), or a reward model folder or hub id with one output label
            (``"path/to/rm"`` or ``lazyllm.Transformers("path/to/rm")``), run on the
            transformers engine.
        response : str
            Column holding the answer to score (the assistant's turn).
        question : str, optional
            Column shown as ``{{ question }}`` by the default user turn ``"{{ question }}"``.
        prompt, system : str, optional
            Jinja2 templates of the user turn and of a system turn, over the row's columns.

        overwrite : bool
            Replace output columns the frame already has (otherwise a PlanError).

        Returns
        -------
        Frame
            Every input row plus ``column`` and the error column.

        Raises
        ------
        PlanError
            No ``question`` and no ``prompt``; a trained handle that is not a
            :class:`lazyllm.RewardModel`; a model the transformers engine cannot run
            (an OpenAI or vLLM spec). Raised here, before any model is loaded.
        ColumnNotFoundError
            ``response``, ``question`` or a template variable is not in the frame.

        Notes
        -----
        Cost: 1 forward pass of the reward model per row, batched (``batch_size`` of
        the spec), cached per request like any LLM call; no generation.

        Examples
        --------
        >>> import lazyllm
        >>> rm = lazyllm.TestModel(name="rm", rewards=(("Paris", 2.0), ("capital", 0.5)))
        >>> f = lazyllm.from_dicts([{"q": "Capital of France?", "a": "Paris"}, {"q": "Capital of France?", "a": "Lyon"}])
        >>> f.reward("r", rm, question="q", response="a").collect(progress=False)["r"].to_list()
        [2.0, 0.0]
        """
        if prompt is None:
            if question is None:
                raise PlanError("reward() needs question='<column>' (the user turn) or prompt='<template>'.")
            prompt = "{{ question }}"
        spec = as_model_spec(reward_model)
        if isinstance(spec, TrainedModel) and spec.spec.method != "reward":
            raise PlanError(f"reward() needs a reward model; {spec.display_name} was trained with "
                            f"{type(spec.spec).__name__}. Train one with frame.train(lazyllm.RewardModel(...)).")
        node = N.Reward(children=(self._node,), column=V.column_name("reward", "column", column), model=spec,
                        prompt=prompt, system=system, aliases=_aliases(question=question), response=response,
                        error_column=error_column or "")
        V.check_node("reward", self.columns, node, overwrite)
        return self._wrap(node)

    def sql(self, query: str) -> "Frame":
        """A DuckDB SQL query over this frame, named ``self``: ``frame.sql("SELECT ... FROM self")``.

        Lazy: DuckDB runs at collect time over Arrow data; the result can be chained
        into further operators (LLM ones included). See :func:`lazyllm.sql` for several frames.

        Parameters
        ----------
        query : str
            A DuckDB ``SELECT`` that reads the table ``self``.

        Returns
        -------
        Frame
            The query's result; its schema is checked against the input schema when the
            frame is built.

        Raises
        ------
        PlanError
            The query does not parse or does not run on this frame's schema.

        Notes
        -----
        No LLM call of its own. The columns the query reads are found by parsing it with
        sqlglot, so LLM columns it does not read are never computed, and a simple
        ``WHERE`` on input columns moves below the LLM nodes like a ``filter``.
        Library: DuckDB (``duckdb``), sqlglot.
        """
        return Frame(N.SQL(children=(self._node,), query=query, names=("self",)))

    def train(self, spec: Any) -> Any:
        """A lazy trained model: ``spec`` (SFT, DPO, ORPO, KTO, SimPO, RewardModel) on this frame.

        Nothing trains now. The handle is a model spec: pass it to ``generate(...)``
        (the planner trains first, in the same collect) or call ``handle.fit()``.
        A finished training is cached by fingerprint (data subplan + spec + base
        model) in the workspace: rerunning the workflow does not retrain.

        Parameters
        ----------
        spec : TrainSpec
            :class:`lazyllm.SFT`, :class:`lazyllm.DPO`, :class:`lazyllm.ORPO`,
            :class:`lazyllm.SimPO`, :class:`lazyllm.KTO` or :class:`lazyllm.RewardModel`,
            naming this frame's columns.

        Returns
        -------
        lazyllm.training.TrainedModelHandle
            A model spec (fingerprint: training data subplan, spec, base model) with
            ``fit()``.

        Raises
        ------
        ColumnNotFoundError
            A column named by the spec is not in the frame (raised here).
        PlanError
            ``spec`` is not a training spec.

        Notes
        -----
        No cost now. When used: the LLM work of this frame (cached) plus the training
        (see each spec for seconds per step); trl and peft are checked before any LLM call.
        """
        if not isinstance(spec, TrainSpec):
            raise PlanError(f"train() takes a training spec (lazyllm.SFT, DPO, ORPO, KTO, SimPO, RewardModel), "
                            f"got {type(spec).__name__}.")
        check_columns(spec.columns().values(), self.columns, where=f"train({type(spec).__name__})")
        return TrainedModelHandle(spec=spec, data=self._node)

    # -- sinks ---------------------------------------------------------------------------
    def collect(self, *, workspace: WorkspaceLike = None, progress: bool | None = None,  # type: ignore[valid-type]
                optimize: bool = True, executor: "str | Any | None" = None, max_cost: float | None = None,
                max_total_tokens: int | None = None) -> pl.DataFrame:
        """Run the plan and return a ``polars.DataFrame``.

        Parameters
        ----------
        workspace : str, path or Workspace, optional
            Cache and run outputs (default ``LAZYLLM_HOME`` or ``./.lazyllm``).
        progress : bool, optional
            Progress bars and log lines on stderr (default on unless ``LAZYLLM_QUIET=1``).
        optimize : bool
            Apply the optimizer rules (default). ``False`` runs the plan as written,
            for comparison and debugging.
        executor : str or lazyllm.RayExecutor, optional
            Where LLM requests run: ``"local"`` (this process; the default, or
            ``LAZYLLM_EXECUTOR``), ``"ray"`` (a local Ray cluster, or the one named by
            ``LAZYLLM_RAY_ADDRESS``) or ``lazyllm.RayExecutor(address=..., replicas=...)``.
            Results and the cache are the same either way.
        max_cost : float, optional
            A hard budget in USD over the LLM calls this collect sends (cache hits are
            free), priced with each model's ``prices()``. A request is sent only while
            the cost reported so far, plus the estimated cost of the requests in flight
            and of this one (prompt tokens plus ``max_tokens``: an upper bound), stays
            within it; the first that does not fit stops all sending. Rows not sent are
            null with an error naming the budget; answers back are cached, so a rerun
            with a larger budget continues where this one stopped.
        max_total_tokens : int, optional
            The same hard budget in tokens (prompt plus generated), for any model.

        Returns
        -------
        polars.DataFrame
            The frame's rows and columns (``frame.columns``, ``frame.schema``). A failed
            LLM row holds a null and the reason in its ``<column>_error`` column.

        Raises
        ------
        EngineError
            A model could not be loaded. Batches already computed stay in the cache.
        MissingDependencyError
            ``executor="ray"`` without Ray installed (before anything runs).
        WorkspaceError
            ``workspace`` is not a usable folder (before anything runs).
        ParameterError
            ``max_cost`` or ``max_total_tokens`` is not a positive number.
        PlanError
            ``max_cost`` with a model that has no price (before anything runs).

        Notes
        -----
        Cost: one LLM call per distinct request that is not in the cache (see
        :meth:`explain` for the estimate before running); each engine batch is
        committed to the cache as it returns, so an interruption loses at most the
        batch in flight and a rerun resumes. A rerun of the same plan loads no model.
        """
        return _exec.collect(self._node, workspace=workspace, progress=progress, optimize=optimize,
                             executor=executor, budget=Budget(max_cost, max_total_tokens)).frames[0]

    def explain(self, *, optimized: bool = True, workspace: WorkspaceLike = None,  # type: ignore[valid-type]
                fingerprints: bool = True, max_cost: float | None = None,
                max_total_tokens: int | None = None) -> str:
        """The plan as text, with per-LLM-node rows in, predicted cache hits and LLM calls.

        Parameters
        ----------
        optimized : bool
            Show the optimized plan and the rules that fired, one line each, with the
            LLM calls of the optimized plan against the plan as written (default), or
            the logical plan as written (False).
        workspace : str, path or Workspace, optional
            Whose cache predicts the cache hits (default ``LAZYLLM_HOME`` or ``./.lazyllm``).
        fingerprints : bool
            Show each node's short fingerprint.
        max_cost, max_total_tokens : float, int, optional
            The budget :meth:`collect` would run under: when the estimate passes it, a
            ``warning:`` line under the header says so, before anything runs.

        Returns
        -------
        str
            One line per plan node (root first); per LLM node: rows in, LLM calls to
            make, predicted cache hits, estimated input tokens (the model's tokenizer
            when it is on disk, else characters / 4) and output tokens, and the cost for
            priced models.

        Raises
        ------
        ParameterError, PlanError
            A budget as :meth:`collect` refuses it.

        Notes
        -----
        Cost: reads the inputs and looks every request up in the cache (a dry run):
        no model is loaded and no LLM is called. Rows that wait on an upstream LLM
        output are estimated (counted as uncertain). A chain of LLM nodes whose input
        has more than 50,000 rows and whose output no other LLM node reads is
        estimated from a uniform, seeded sample of 20,000 rows
        (``LAZYLLM_EXPLAIN_SAMPLE`` sets the sample size, 0 turns sampling off), its
        counts scaled to every row; the text then says so and gives a 95% interval
        (Wilson) of the LLM calls to make. About 1-2 s per sampled chain.

        Examples
        --------
        >>> import lazyllm
        >>> frame = lazyllm.from_dicts([{"q": "2+2?"}]).generate("a", lazyllm.TestModel(), prompt="{{ q }}")
        >>> print(frame.explain(fingerprints=False).splitlines()[0])
        optimized plan
        """
        budget = Budget(max_cost, max_total_tokens)
        check_prices([self._node], budget)
        if not optimized:
            plan = self._node
            stats = _exec.dry_run([plan], workspace)
            header = ["logical plan"]
        else:
            result = optimize(self._node)
            plan = result.plan
            stats = _exec.dry_run([plan], workspace)
            header = ["optimized plan", "  " + savings(_exec.dry_run([self._node], workspace), stats)]
            saved = rule_savings(self._node, result,
                                 lambda node: sum(s.calls for s in _exec.dry_run([node], workspace).values()))
            header += rule_lines(result.fired, saved) or ["  (no rule fired)"]
        warning = over_budget(stats, budget)
        if warning is not None:
            header.insert(1, "  " + warning)
        return "\n".join(header) + "\n" + render_plan(plan, stats, fingerprints=fingerprints)

    def sink_parquet(self, directory: str | os.PathLike[str], *, rows_per_shard: int = 100_000,
                     **collect_kwargs: Any) -> list[Path]:
        """Run the plan one input partition at a time and write one parquet shard per
        partition (``part-00000.parquet``, ...) in ``directory``, without gathering the
        result in memory. For inputs larger than memory, and with
        ``executor="ray"``, parquet inputs are read in partitions on the cluster.

        Parameters
        ----------
        directory : path
            Output folder; earlier ``part-*.parquet`` files in it are removed first.
        rows_per_shard : int
            Input rows per partition (default 100,000); a shard has at most that many rows.
        **collect_kwargs
            ``workspace``, ``progress``, ``optimize``, ``executor``, ``max_cost``,
            ``max_total_tokens`` as for :meth:`collect` (the budget covers every shard).

        Returns
        -------
        list of pathlib.Path
            The shard paths, in input order (read them with
            ``lazyllm.read_parquet(dir + "/*.parquet")``).

        Raises
        ------
        PlanError
            The plan has an operation that needs every row at once (sort, join,
            aggregate, head, sample, non-elementwise expression); raised before
            anything is read or any model is loaded.
        """
        budget = Budget(collect_kwargs.pop("max_cost", None), collect_kwargs.pop("max_total_tokens", None))
        return _exec.sink_partitioned(self._node, directory, rows_per_shard=rows_per_shard, budget=budget,
                                      **collect_kwargs)[0]

    def sink_hub(self, repo_id: str, *, rows_per_shard: int = 100_000, **kwargs: Any) -> str:
        """Stream the result to a Hugging Face dataset repo, one commit per partition, with a
        progress card and resume after a crash (see :func:`lazyllm.hub.sink_hub`); returns
        the URL of the final commit.

        Parameters
        ----------
        repo_id : str
            The dataset repo (``user/name``); created if missing.
        rows_per_shard : int
            Rows per partition, shard and commit.
        **kwargs
            Passed to :func:`lazyllm.hub.sink_hub` (``token``, ``private``, ``split``, ``workspace``, ...).

        Returns
        -------
        str
            The URL of the final commit.

        Raises
        ------
        ParameterError
            A bad ``split`` or ``rows_per_shard`` (before any call).
        PlanError
            The plan has a node that needs every row at once (it cannot be partitioned).
        HubError
            The Hub refused a call (the message says which and why).

        Notes
        -----
        Cost: the LLM calls of the partitions not on the Hub yet (cache hits for earlier
        work), one commit per partition and one final commit; peak memory bounded by one
        partition.
        """
        return sink_hub(self, repo_id, rows_per_shard=rows_per_shard, **kwargs)

    def write_parquet(self, path: str | os.PathLike[str], **collect_kwargs: Any) -> pl.DataFrame:
        """Collect and write a parquet file; returns the collected DataFrame.

        Parameters
        ----------
        path : str or path
            The file (parent folders are created).
        **kwargs
            Passed to :meth:`collect` (``workspace``, ``progress``, ``optimize``, ``executor``).

        Returns
        -------
        polars.DataFrame
            What was written.

        Raises
        ------
        LazyLLMError
            What :meth:`collect` raises.

        Notes
        -----
        Cost: one collect (its LLM calls, served from the cache when already computed).
        For results larger than memory use :meth:`sink_parquet`.
        """
        df = self.collect(**collect_kwargs)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path)
        return df

    def card(self, *, workspace: WorkspaceLike = None, **kwargs: Any) -> "Any":  # type: ignore[valid-type]
        """The synthetic data card of this frame (see :func:`lazyllm.cards.data_card`).

        Parameters
        ----------
        workspace : str, path or Workspace, optional
            Whose run logs give the row count and the LLM work of the latest collect.
        **kwargs
            Passed to :func:`lazyllm.cards.data_card` (``collect``, ``title``, ``license``, ...).

        Returns
        -------
        lazyllm.cards.DataCard
            JSON data and a Hugging Face README (``to_markdown()``, ``save(dir)``).

        Raises
        ------
        PlanError
            Bad card options.

        Notes
        -----
        No LLM call: it optimizes the plan and reads run logs (with ``collect=True`` on a
        frame never collected in the workspace: one collect).
        """
        return data_card(self, workspace=workspace, **kwargs)

    def save_dataset(self, directory: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write parquet shards and a README data card (see :func:`lazyllm.hub.save_dataset`).

        Parameters
        ----------
        directory : str or path
            The dataset folder (created).
        **kwargs
            Passed to :func:`lazyllm.hub.save_dataset` (``data``, ``split``, ``max_shard_rows``, ``workspace``, ...).

        Returns
        -------
        pathlib.Path
            The folder: ``data/<split>-*.parquet``, ``README.md``, ``lazyllm_card.json``.

        Raises
        ------
        ParameterError
            A bad ``split`` or shard size.
        PlanError
            ``data=`` does not match the frame.

        Notes
        -----
        Cost: one collect unless ``data=`` is the collected DataFrame; writing parquet.
        """
        return save_dataset(self, directory, **kwargs)

    def publish(self, repo_id: str, **kwargs: Any) -> str:
        """Publish to the Hugging Face Hub (see :func:`lazyllm.hub.publish`); returns the commit URL.

        Parameters
        ----------
        repo_id : str
            The dataset repo (``user/name``); created if missing.
        **kwargs
            Passed to :func:`lazyllm.hub.publish` (``token``, ``private``, ``data``, ``split``, ...).

        Returns
        -------
        str
            The URL of the commit.

        Raises
        ------
        HubError
            The Hub refused a call (no token, no permission, ...).
        ParameterError
            A bad ``split`` or shard size.

        Notes
        -----
        Cost: one collect unless ``data=`` is given; one commit with the shards and the card.
        """
        return publish(self, repo_id, **kwargs)

    def write_ndjson(self, path: str | os.PathLike[str], **collect_kwargs: Any) -> pl.DataFrame:
        """Collect and write JSON lines; returns the collected DataFrame.

        Parameters
        ----------
        path : str or path
            The file (parent folders are created).
        **kwargs
            Passed to :meth:`collect`.

        Returns
        -------
        polars.DataFrame
            What was written.

        Raises
        ------
        LazyLLMError
            What :meth:`collect` raises.

        Notes
        -----
        Cost: one collect (its LLM calls, served from the cache when already computed).
        """
        df = self.collect(**collect_kwargs)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.write_ndjson(path)
        return df


def sql(query: str, **frames: Frame) -> Frame:
    """A lazy Frame from a DuckDB SQL query over named frames.

    Parameters
    ----------
    query : str
        A DuckDB ``SELECT`` over the tables named by the keywords.
    **frames : Frame
        Table name -> frame.

    Returns
    -------
    Frame
        Lazy: DuckDB runs at collect time over the inputs' Arrow data (no LLM call of
        its own; the columns the query reads are found by parsing it with sqlglot, so
        LLM columns it does not read are never computed).

    >>> import lazyllm
    >>> a = lazyllm.from_dicts([{"id": 1, "q": "x"}, {"id": 2, "q": "y"}])
    >>> b = lazyllm.from_dicts([{"id": 2, "score": 9}])
    >>> lazyllm.sql("SELECT a.q, b.score FROM a JOIN b USING (id)", a=a, b=b).collect(progress=False).rows()
    [('y', 9)]

    Raises
    ------
    PlanError
        No frame, a value that is not a Frame, or a query that does not run on the
        inputs' schemas (checked when the frame is built).
    """
    if not frames:
        raise PlanError("sql() needs at least one frame: lazyllm.sql('SELECT ... FROM t', t=frame).")
    for name, f in frames.items():
        if not isinstance(f, Frame):
            raise PlanError(f"sql(): {name}= must be a lazyllm Frame, got {type(f).__name__}.")
    return Frame(N.SQL(children=tuple(f.plan for f in frames.values()), query=query, names=tuple(frames)))


def _aliases(**mapping: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((var, col) for var, col in mapping.items() if col is not None)


def canonical_json_schema(schema: Any) -> str | None:
    """A JSON schema as canonical JSON text, from a pydantic model class, a dict or JSON text."""
    if schema is None:
        return None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise PlanError(f"json_schema is not valid JSON: {exc}.") from None
    if not isinstance(schema, Mapping):
        raise PlanError(f"json_schema must be a pydantic model class, a dict or JSON text, got {type(schema).__name__}.")
    V.check_json_schema("generate", schema)
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class LLMPredicate:
    """A yes/no question to an LLM, for :meth:`Frame.filter`. Build it with :func:`llm_predicate`.

    Parameters
    ----------
    model : ModelSpec
        The model that answers.
    prompt, system : str
        Jinja2 templates of the user and system messages.
    sampling : SamplingParams
        Temperature, seed and ``max_tokens`` (2) of the request.
    aliases : tuple of (variable, column)
        Template variables read from differently named columns.
    """

    model: ModelSpec
    prompt: str
    system: str | None
    sampling: SamplingParams
    aliases: tuple[tuple[str, str], ...] = ()


def llm_predicate(model: Any, prompt: str, *, system: str | None = None, temperature: float = 0.0, seed: int = 0,
                  **columns: str) -> LLMPredicate:
    """An LLM predicate: ``frame.filter(llm_predicate(model, "Is this answerable? {{ doc }}"))``.

    The model answers "yes" or "no" (constrained decoding); rows answered "yes" are
    kept, rows answered "no" or whose request failed are dropped.

    Parameters
    ----------
    model : ModelSpec or str
        The model that answers (a string is a transformers alias, folder or Hub id).
    prompt : str
        Jinja2 template of the user message; the columns it reads are checked when the
        filter is added to a frame.
    system : str, optional
        System message (default :data:`lazyllm.prompts.FILTER_SYSTEM`, which asks for a
        yes/no answer).
    temperature : float
        0 (default) for greedy answers.
    seed : int
        Sampling seed (with ``temperature > 0``).
    **columns : str
        Template variable -> column (``text="doc"``).

    Returns
    -------
    LLMPredicate
        Pass it to :meth:`Frame.filter`.

    Raises
    ------
    ParameterError
        A bad ``temperature`` or ``seed`` (before any call).

    Notes
    -----
    Cost: one constrained call (at most 2 output tokens) per distinct rendered request
    of the rows reaching the filter, cached. Several LLM filters on the same rows are
    ordered by the optimizer (the most selective per unit of cost first).
    """
    sampling = V.sampling("llm_predicate", temperature=temperature, max_tokens=2, seed=seed)
    return LLMPredicate(as_model_spec(model), prompt, prompts.FILTER_SYSTEM if system is None else system, sampling,
                        tuple(columns.items()))


def concat(frames: Sequence[Frame], *, how: str = "vertical") -> Frame:
    """Concatenate frames lazily (run by ``polars.concat``).

    Parameters
    ----------
    frames : sequence of Frame
        At least one; a single frame is returned as is.
    how : {"vertical", "vertical_relaxed", "diagonal", "diagonal_relaxed", "horizontal"}
        As in ``polars.concat``: ``"vertical"`` needs the same columns and dtypes,
        ``"diagonal"`` fills missing columns with nulls.

    Returns
    -------
    Frame
        The rows of each frame in order (``"vertical"``/``"diagonal"``).

    Raises
    ------
    PlanError
        No frames, something that is not a Frame, or schemas that ``how`` cannot
        combine (the message names the columns that differ).

    Notes
    -----
    Cost: none until collected; a filter above the concat runs in each branch, below
    their LLM nodes where it can (predicate pushdown).

    Examples
    --------
    >>> import lazyllm
    >>> a, b = lazyllm.from_dicts([{"x": 1}]), lazyllm.from_dicts([{"x": 2}])
    >>> lazyllm.concat([a, b]).collect(progress=False)["x"].to_list()
    [1, 2]
    """
    frames = list(frames)
    if not frames or not all(isinstance(f, Frame) for f in frames):
        raise PlanError("concat() takes a non-empty list of lazyllm Frames.")
    if len(frames) == 1:
        return frames[0]
    V.check_concat([f.schema for f in frames], how)
    return Frame(N.Concat(children=tuple(f.plan for f in frames), how=how))


def collect_all(frames: Sequence[Frame], *, workspace: WorkspaceLike = None,  # type: ignore[valid-type]
                progress: bool | None = None, executor: "str | Any | None" = None, max_cost: float | None = None,
                max_total_tokens: int | None = None) -> list[pl.DataFrame]:
    """Collect several frames in one run: a subplan they share runs once.

    Parameters
    ----------
    frames : sequence of Frame
        The frames to compute.
    workspace, progress, executor, max_cost, max_total_tokens
        As for :meth:`Frame.collect`; the budget covers every frame's LLM calls together.

    Returns
    -------
    list of polars.DataFrame
        One result per frame, in order.

    Raises
    ------
    EngineError, MissingDependencyError, WorkspaceError, ParameterError, PlanError
        As for :meth:`Frame.collect`.

    Notes
    -----
    Cost: each distinct request is sent once across all frames (common subplans are
    found by fingerprint and run once; requests of different LLM nodes to the same
    model are batched together); cached ones are not sent at all.

    Examples
    --------
    >>> import lazyllm
    >>> base = lazyllm.from_dicts([{"q": "2+2?"}]).generate("a", lazyllm.TestModel(), prompt="{{ q }}")
    >>> first, second = lazyllm.collect_all([base, base.select("a")], progress=False)
    >>> first["a"].to_list() == second["a"].to_list()
    True
    """
    return _exec.collect_all([f.plan for f in frames], workspace=workspace, progress=progress,
                             executor=executor, budget=Budget(max_cost, max_total_tokens)).frames
