"""Logical plan nodes.

Nodes are frozen dataclasses compared by structure (their fingerprint); children are
tuples. Each node validates itself in ``__post_init__`` against its children's
schema, so an invalid plan fails when it is built, before any model is loaded.

Traits, declared once per node type and computed from the node's expressions, with the
safest defaults (optimizer rules, the waves runner and partitioned sinks read only these,
never a list of node types):

- ``is_llm``: the node calls an LLM;
- ``row_effect()``: what it does to rows: ``"keep"`` (one output row per input row, in
  order), ``"drop"`` (a subset of the input rows, in order), ``"reorder"`` (a
  permutation) or ``"other"`` (anything else: limits, samples, joins, explodes...);
- ``elementwise()``: output row *i* depends on its input row alone (no aggregation,
  window, shift or rank), so the node gives the same rows on any subset or partition of
  its input; with ``"keep"``/``"drop"`` this makes a node *row-by-row*
  (:meth:`PlanNode.row_by_row`);
- ``columns_read()``: the input columns the node reads (``None`` = all/unknown);
- ``columns_written()``: the output columns that are not an input column passed
  through unchanged under its own name (added, replaced or renamed ones);
- ``required_from_child(required, i)``: the columns of child ``i`` needed to produce the
  columns ``required`` of the node's output (``None`` = every column);
- ``selection_columns()``: for a node that only selects rows of its first input (order
  kept, no columns changed) from the values of these columns and the row count (a
  unique on a key, a semi/anti join, a sample), the columns; None for other nodes;
- ``filter_routes()`` and ``source_column(column, i)``: where a row-by-row predicate on
  the node's output may be evaluated instead (each route is a group of children that
  all take the predicate), and which column of child ``i`` an output column's values
  come from (``None``: not there, or the predicate does not commute with the node).

Relational nodes delegate all dataframe work to polars (``apply`` builds a
``polars.LazyFrame`` from the children's); the schema of a node is inferred by
polars on empty input.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import sqlglot
from sqlglot import exp

from lazyllm.backends.answers import parse_answer
from lazyllm.core.errors import ColumnNotFoundError, MissingDependencyError, PlanError, TemplateError
from lazyllm.core.protocols import Message, ModelSpec, Request, Response, SamplingParams

from lazyllm.core.hashing import hash_canonical
from .templates import PromptTemplate, check_columns, render_column
from lazyllm.backends.logprobs import normalize
from lazyllm.backends.reasoning import split_response

__all__ = [
    "expr_columns",
    "is_elementwise",
    "PlanNode",
    "DataFrameSource",
    "FileSource",
    "Select",
    "WithColumns",
    "Filter",
    "Head",
    "Sort",
    "Unique",
    "Join",
    "Concat",
    "Explode",
    "Rename",
    "Drop",
    "Sample",
    "SplitPart",
    "SQL",
    "LLMNode",
    "Generate",
    "Judge",
    "PairwiseJudge",
    "LLMFilter",
    "Reward",
    "json_schema_dtype",
    "walk",
    "wave_chain",
]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PlanNode:
    """Base class of plan nodes."""

    VERSION: ClassVar[int] = 1
    is_llm: ClassVar[bool] = False
    n_children: ClassVar[int | None] = 1  # None: any number >= 1
    same_columns: ClassVar[bool] = False  # output columns are the child's (only rows change)

    children: tuple["PlanNode", ...] = ()
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    _schema: pl.Schema | None = field(default=None, init=False, repr=False)
    _empty: pl.LazyFrame | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.children, tuple) or not all(isinstance(c, PlanNode) for c in self.children):
            raise PlanError(f"{type(self).__name__}: children must be a tuple of plan nodes.")
        want = self.n_children
        if want is None and not self.children:
            raise PlanError(f"{type(self).__name__} needs at least one input.")
        if want is not None and len(self.children) != want:
            raise PlanError(f"{type(self).__name__} takes {want} input(s), got {len(self.children)}.")
        self.validate()
        self.schema()  # infer now: a bad plan fails when it is built

    # -- to override -------------------------------------------------------------------
    def validate(self) -> None:
        """Check parameters against the children's schemas (raise PlanError & co)."""

    def apply(self, *inputs: pl.LazyFrame) -> pl.LazyFrame:
        """The polars computation of a relational node."""
        raise NotImplementedError(f"{type(self).__name__} is not a relational node")

    def _infer_schema(self) -> pl.Schema:
        if self.same_columns:
            return self.child.schema()
        return _polars_schema(lambda: self.empty().collect_schema(), self)

    def empty(self) -> pl.LazyFrame:
        """A lazy frame with this node's schema and no rows (for schema inference).

        Relational nodes apply themselves to their children's empty frames (a lazy
        plan, nothing is built); others build one from their schema.
        """
        if self._empty is None:
            if type(self).apply is PlanNode.apply:
                lf = pl.LazyFrame(schema=self.schema())
            elif self.children:
                lf = self.apply(*[c.empty() for c in self.children])
            else:  # a source: its scan, without rows
                lf = self.apply().clear()
            object.__setattr__(self, "_empty", lf)
        return self._empty  # type: ignore[return-value]

    def columns_read(self) -> frozenset[str] | None:
        return None

    def columns_written(self) -> frozenset[str]:
        return frozenset()

    def row_effect(self) -> str:
        """``"keep"``, ``"drop"``, ``"reorder"`` or ``"other"`` (see the module doc)."""
        return "other"

    def elementwise(self) -> bool:
        """Each output row depends on one input row alone (see the module doc)."""
        return False

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        """Columns of child ``index`` needed for the output columns ``required`` (None: all)."""
        return None

    def selection_columns(self) -> frozenset[str] | None:
        """The columns from which the node selects rows of child 0 (see the module doc)."""
        return None

    def filter_routes(self) -> tuple[tuple[int, ...], ...]:
        """Groups of children into which an elementwise predicate on this node's output may
        move (into every child of one group), when it reads only columns that
        :meth:`source_column` finds there. Default: a row-by-row or reordering node with
        one input commutes with such a predicate."""
        ok = len(self.children) == 1 and self.elementwise() and self.row_effect() in ("keep", "drop", "reorder")
        return ((0,),) if ok else ()

    def source_column(self, column: str, index: int = 0) -> str | None:
        """The column of child ``index`` that output ``column`` passes through unchanged, if any."""
        if column in self.columns_written() or column not in self.children[index].columns:
            return None
        return column

    # -- shared ------------------------------------------------------------------------
    def row_by_row(self) -> bool:
        """One input, and each output row is one input row's (kept or dropped, order kept):
        the node may run on slices of its input (waves, partitions) with the same result."""
        return len(self.children) == 1 and self.elementwise() and self.row_effect() in ("keep", "drop")

    @property
    def child(self) -> "PlanNode":
        return self.children[0]

    @property
    def kind(self) -> str:
        return type(self).__name__

    def fingerprint_params(self) -> dict[str, Any]:
        """Parameters that decide the output (no children, no performance-only settings)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "children" or f.name.startswith("_") or f.metadata.get("performance_only"):
                continue
            out[f.name] = getattr(self, f.name)
        return out

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of type@version, canonical parameters and children's fingerprints."""
        if self._fingerprint is None:
            fp = hash_canonical(
                {
                    "node": f"{self.kind}@{self.VERSION}",
                    "params": self.fingerprint_params(),
                    "children": [c.fingerprint for c in self.children],
                }
            )
            object.__setattr__(self, "_fingerprint", fp)
        return self._fingerprint  # type: ignore[return-value]

    def schema(self) -> pl.Schema:
        """Output schema (column name -> polars dtype)."""
        if self._schema is None:
            inferred = self._infer_schema()
            object.__setattr__(self, "_schema", inferred if isinstance(inferred, pl.Schema) else pl.Schema(inferred))
        return self._schema  # type: ignore[return-value]

    @property
    def columns(self) -> list[str]:
        """Output column names (subclasses must not define a field called ``columns``)."""
        return list(self.schema().names())

    def with_children(self, *children: "PlanNode") -> "PlanNode":
        return dataclasses.replace(self, children=tuple(children))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.fingerprint == self.fingerprint  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.fingerprint)


def spine(node: PlanNode) -> list[PlanNode]:
    """``node`` and its first children down to a leaf, top first (the linear part of a plan:
    what rules' examples print).

    >>> import lazyllm
    >>> [n.kind for n in spine(lazyllm.from_dicts([{"x": 1}]).head(1).plan)]
    ['Head', 'DataFrameSource']
    """
    out = [node]
    while node.children:
        node = node.children[0]
        out.append(node)
    return out


def walk(node: PlanNode) -> list[PlanNode]:
    """All nodes below and including ``node``, children before parents, each once."""
    seen: dict[str, PlanNode] = {}

    def visit(n: PlanNode) -> None:
        if n.fingerprint in seen:
            return
        for c in n.children:
            visit(c)
        seen[n.fingerprint] = n

    visit(node)
    return list(seen.values())


def wave_chain(node: PlanNode) -> list[PlanNode] | None:
    """The nodes under a limit that may run on successive slices of their input (top
    first), when that saves LLM work: the row-by-row nodes from ``node`` down (see
    :meth:`PlanNode.row_by_row`), if they hold LLM work and something that drops rows.
    None otherwise. A node that needs other rows (``x >= x.median()``) ends the chain.
    """
    chain: list[PlanNode] = []
    below = node
    while below.row_by_row():
        chain.append(below)
        below = below.children[0]
    has_llm = any(n.is_llm for n in chain)
    has_filter = any(n.row_effect() == "drop" for n in chain)
    return chain if has_llm and has_filter else None


def _polars_schema(fn: Any, node: PlanNode) -> pl.Schema:
    try:
        return fn()
    except pl.exceptions.ColumnNotFoundError as exc:
        existing = node.children[0].columns if node.children else []
        missing = str(exc).split("\n")[0].strip().strip('"').removeprefix("unable to find column ")
        raise ColumnNotFoundError(missing.strip('"; '), existing, where=node.kind) from None
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().split("\n")[0]
        raise PlanError(f"{node.kind}: polars rejects this operation: {first}") from None


def expr_columns(exprs: Sequence[pl.Expr]) -> frozenset[str] | None:
    """Columns the expressions read; None (= possibly every column) when any uses a
    selector (``pl.all()``, a regex, ``pl.exclude``, several names in one ``pl.col``)."""
    out: set[str] = set()
    for e in exprs:
        if '"Selector"' in e.meta.serialize(format="json"):
            return None
        out.update(e.meta.root_names())
    return frozenset(out)


def _plus(required: frozenset[str] | None, read: frozenset[str] | None) -> frozenset[str] | None:
    """The columns needed above plus the ones a node reads itself (None: all)."""
    return None if required is None or read is None else required | read


_NOT_ELEMENTWISE = frozenset({"Agg", "Over", "Rolling", "Window", "Len", "Slice", "Gather", "Sort", "SortBy",
                               "Filter", "Explode", "AnonymousFunction", "Shift", "Diff", "Rank", "Unique"})


def is_elementwise(exprs: Sequence[pl.Expr]) -> bool:
    """True when each expression computes row *i* from row *i* alone (no aggregation,
    window, shift, sort or user function), so it gives the same rows on any subset or
    partition of its input. Conservative: unknown means False.

    >>> is_elementwise([pl.col("a").str.len_chars() > 3])
    True
    >>> is_elementwise([pl.col("a") > pl.col("a").mean()])
    False
    """
    def walk(tree: Any) -> bool:
        if isinstance(tree, str):
            return tree not in _NOT_ELEMENTWISE
        if isinstance(tree, dict):
            return all(k not in _NOT_ELEMENTWISE and walk(v) for k, v in tree.items())
        if isinstance(tree, list):
            return all(walk(v) for v in tree)
        return True

    for e in exprs:
        try:
            if not (e.meta.is_row_separable() and e.meta.is_length_preserving()):
                return False
        except pl.exceptions.PolarsError:  # a selector (pl.all()) outside a context: unknown
            return False
        if not walk(json.loads(e.meta.serialize(format="json"))):
            return False
    return True


def _content_hash_df(df: pl.DataFrame) -> str:
    buf = io.BytesIO()
    df.write_ipc_stream(buf, compression="uncompressed")
    return hashlib.sha256(buf.getvalue()).hexdigest()


# ------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DataFrameSource(PlanNode):
    """In-memory data (from_polars, from_dicts, from_pandas, from_arrow, from_hf).

    Fingerprinted by content (Arrow IPC bytes), so the same data gives the same
    fingerprint in every process.
    """

    n_children: ClassVar[int | None] = 0
    data: pl.DataFrame = field(repr=False)
    label: str = field(default="from_polars", metadata={"performance_only": True})
    _content: str | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        if not isinstance(self.data, pl.DataFrame):
            raise PlanError(f"DataFrameSource needs a polars.DataFrame, got {type(self.data).__name__}.")

    def fingerprint_params(self) -> dict[str, Any]:
        if self._content is None:
            object.__setattr__(self, "_content", _content_hash_df(self.data))
        return {"content": self._content}

    def _infer_schema(self) -> pl.Schema:
        return self.data.schema

    def apply(self) -> pl.LazyFrame:  # type: ignore[override]
        return self.data.lazy()


_FORMATS = ("parquet", "csv", "ndjson")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class FileSource(PlanNode):
    """Files read by polars (parquet, csv, ndjson); ``paths`` may hold several files.

    Fingerprinted by the files' content (SHA-256 of their bytes) and the read options,
    not by where they lie, so a copied workspace reproduces the run.
    """

    n_children: ClassVar[int | None] = 0
    paths: tuple[str, ...]
    format: str
    options: tuple[tuple[str, Any], ...] = ()
    _content: str | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        if self.format not in _FORMATS:
            raise PlanError(f"Unknown file format {self.format!r}; choose one of {list(_FORMATS)}.")
        if not self.paths:
            raise PlanError("No input files: the path or glob matched nothing. Check the path.")
        for p in self.paths:
            if not Path(p).is_file():
                raise PlanError(f"Input file {p!r} does not exist. Check the path (globs are expanded).")

    def fingerprint_params(self) -> dict[str, Any]:
        if self._content is None:
            h = hashlib.sha256()
            for p in self.paths:
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                h.update(b"\0file\0")
            object.__setattr__(self, "_content", h.hexdigest())
        return {"format": self.format, "options": self.options, "content": self._content}

    def apply(self) -> pl.LazyFrame:  # type: ignore[override]
        opts = dict(self.options)
        files = list(self.paths)
        if self.format == "parquet":
            return pl.scan_parquet(files, **opts)
        if self.format == "csv":
            return pl.concat([pl.scan_csv(f, **opts) for f in files], how="vertical")
        return pl.concat([pl.scan_ndjson(f, **opts) for f in files], how="vertical")


# ------------------------------------------------------------------------------------
# Relational nodes (executed by polars)
# ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Select(PlanNode):
    """``LazyFrame.select``: keep/compute the given expressions only."""

    exprs: tuple[pl.Expr, ...]

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.select(self.exprs)

    def is_projection(self) -> bool:
        """Only bare columns (no computation, no rename): row-local, order kept."""
        return all(e.meta.is_column() for e in self.exprs)

    def columns_read(self) -> frozenset[str] | None:
        return expr_columns(self.exprs)

    def columns_written(self) -> frozenset[str]:
        return frozenset(e.meta.output_name() for e in self.exprs if not e.meta.is_column()
                         and expr_columns([e]) is not None)

    def row_effect(self) -> str:
        return "keep" if self.elementwise() else "other"

    def elementwise(self) -> bool:
        return expr_columns(self.exprs) is not None and is_elementwise(self.exprs)

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return expr_columns(self.exprs)  # every expression is evaluated, needed above or not


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WithColumns(PlanNode):
    """``LazyFrame.with_columns``: add or replace columns (rows kept, in order)."""

    exprs: tuple[pl.Expr, ...]

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.with_columns(self.exprs)

    def columns_read(self) -> frozenset[str] | None:
        return expr_columns(self.exprs)

    def columns_written(self) -> frozenset[str] | None:  # type: ignore[override]
        """Output names; None when a selector expands to names known only at run time."""
        if expr_columns(self.exprs) is None:
            return None
        return frozenset(e.meta.output_name() for e in self.exprs)

    def row_effect(self) -> str:
        return "keep"

    def elementwise(self) -> bool:
        return is_elementwise(self.exprs)

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        written = self.columns_written()
        if required is None or written is None:
            return None
        return _plus(required - written, self.columns_read())


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Filter(PlanNode):
    """``LazyFrame.filter`` with a boolean polars expression (row order kept)."""

    same_columns: ClassVar[bool] = True

    predicate: pl.Expr

    def validate(self) -> None:
        check_columns(self.predicate.meta.root_names(), self.child.columns, where="filter()")

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.filter(self.predicate)

    def columns_read(self) -> frozenset[str] | None:
        return expr_columns([self.predicate])

    def row_effect(self) -> str:
        return "drop"

    def elementwise(self) -> bool:
        return is_elementwise([self.predicate])

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return _plus(required, self.columns_read())


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Head(PlanNode):
    """The first ``n`` rows.

    ``waves`` (set by the limit-pushdown rule, performance only) runs the LLM work
    below in waves of rows until ``n`` rows pass the filters, instead of for every row.
    """

    same_columns: ClassVar[bool] = True

    n: int
    waves: bool = field(default=False, metadata={"performance_only": True})

    def validate(self) -> None:
        if not isinstance(self.n, int) or self.n < 0:
            raise PlanError(f"head(n) needs a non-negative int, got {self.n!r}.")

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.head(self.n)

    def columns_read(self) -> frozenset[str]:
        return frozenset()

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return required


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Sort(PlanNode):
    """Stable sort by expressions."""

    same_columns: ClassVar[bool] = True

    by: tuple[pl.Expr, ...]
    descending: tuple[bool, ...]
    nulls_last: bool = False

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.sort(list(self.by), descending=list(self.descending), nulls_last=self.nulls_last,
                       maintain_order=True)

    def columns_read(self) -> frozenset[str] | None:
        return expr_columns(self.by)

    def row_effect(self) -> str:
        return "reorder"

    def elementwise(self) -> bool:
        return is_elementwise(self.by)  # sort keys computed row by row: the sort is stable on any subset

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return _plus(required, self.columns_read())


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Unique(PlanNode):
    """Drop duplicate rows (on ``subset`` columns), keeping order."""

    same_columns: ClassVar[bool] = True

    subset: tuple[str, ...] | None = None
    keep: str = "first"

    def validate(self) -> None:
        if self.keep not in ("first", "last", "none", "any"):
            raise PlanError(f"unique(keep=...) must be 'first', 'last', 'none' or 'any', got {self.keep!r}.")
        if self.subset is not None:
            check_columns(self.subset, self.child.columns, where="unique()")

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        subset = list(self.subset) if self.subset is not None else None
        return lf.unique(subset=subset, keep=self.keep, maintain_order=True)  # type: ignore[arg-type]

    def columns_read(self) -> frozenset[str] | None:
        return None if self.subset is None else frozenset(self.subset)

    def filter_routes(self) -> tuple[tuple[int, ...], ...]:
        return ((0,),)  # a predicate on the key columns keeps or drops a whole group of duplicates

    def selection_columns(self) -> frozenset[str] | None:
        # keep="any" may pick a different duplicate on different input; no subset compares LLM output
        return None if self.subset is None or self.keep == "any" else frozenset(self.subset)

    def source_column(self, column: str, index: int = 0) -> str | None:
        return column if self.subset is None or column in self.subset else None

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return _plus(required, self.columns_read())


_JOIN_HOWS = ("inner", "left", "right", "full", "semi", "anti", "cross")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Join(PlanNode):
    """``LazyFrame.join`` of two inputs; row order of the left input is kept."""

    n_children: ClassVar[int | None] = 2
    how: str = "inner"
    on: tuple[pl.Expr, ...] | None = None
    left_on: tuple[pl.Expr, ...] | None = None
    right_on: tuple[pl.Expr, ...] | None = None
    suffix: str = "_right"

    def validate(self) -> None:
        if self.how not in _JOIN_HOWS:
            raise PlanError(f"join(how={self.how!r}) is not supported; choose one of {list(_JOIN_HOWS)}.")
        if self.how != "cross" and self.on is None and (self.left_on is None or self.right_on is None):
            raise PlanError("join() needs on=... or both left_on=... and right_on=... (or how='cross').")

    def apply(self, left: pl.LazyFrame, right: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        kwargs: dict[str, Any] = {"how": self.how, "suffix": self.suffix}
        if self.how != "cross":
            if self.on is not None:
                kwargs["on"] = list(self.on)
            else:
                kwargs["left_on"] = list(self.left_on or ())
                kwargs["right_on"] = list(self.right_on or ())
        if self.how in ("inner", "left", "full", "cross"):
            kwargs["maintain_order"] = "left_right"
        elif self.how == "right":
            kwargs["maintain_order"] = "right_left"
        else:  # semi, anti: the left rows, in their order (polars does not keep it by default)
            kwargs["maintain_order"] = "left"
        return left.join(right, **kwargs)

    def selection_columns(self) -> frozenset[str] | None:
        keys = self.on if self.on is not None else self.left_on
        if self.how not in ("semi", "anti") or keys is None or not all(e.meta.is_column() for e in keys):
            return None
        return frozenset(e.meta.output_name() for e in keys)

    def filter_routes(self) -> tuple[tuple[int, ...], ...]:
        # a predicate on one side's columns may filter that side first, unless the join keeps
        # that side's unmatched rows padded with nulls on the other side (outer joins)
        left = self.how in ("inner", "left", "semi", "anti", "cross")
        right = self.how in ("inner", "right", "cross")
        return tuple(r for r, ok in (((0,), left), ((1,), right)) if ok)

    def source_column(self, column: str, index: int = 0) -> str | None:
        left, right = self.children
        if index == 0:
            return column if column in left.columns and column in self.columns else None
        base = column.removesuffix(self.suffix) if self.suffix and column.endswith(self.suffix) else None
        if base is not None and base in right.columns and base in left.columns:
            found: str | None = base  # renamed with the suffix: the left side has the name
        elif column not in left.columns and column in right.columns:
            found = column
        else:
            found = None
        if found is None or self.schema().get(column) != right.schema().get(found):
            return None
        keys = {e.meta.output_name() for e in (self.on or self.right_on or ()) if e.meta.is_column()}
        return None if found in keys else found  # key columns are coalesced with the left side's


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Concat(PlanNode):
    """Concatenate inputs (``how`` as in ``polars.concat``)."""

    n_children: ClassVar[int | None] = None
    how: str = "vertical"

    def validate(self) -> None:
        hows = ("vertical", "vertical_relaxed", "diagonal", "diagonal_relaxed", "horizontal")
        if self.how not in hows:
            raise PlanError(f"concat(how={self.how!r}) is not supported; choose one of {list(hows)}.")

    def apply(self, *inputs: pl.LazyFrame) -> pl.LazyFrame:
        return pl.concat(list(inputs), how=self.how)  # type: ignore[arg-type]

    def filter_routes(self) -> tuple[tuple[int, ...], ...]:
        # vertical: the rows of the result are each input's rows, unchanged (other modes cast or pad)
        return (tuple(range(len(self.children))),) if self.how == "vertical" else ()

    def source_column(self, column: str, index: int = 0) -> str | None:
        return column if column in self.children[index].columns else None


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Explode(PlanNode):
    """One row per element of list column(s)."""

    names: tuple[str, ...]

    def validate(self) -> None:
        check_columns(self.names, self.child.columns, where="explode()")

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.explode(list(self.names))

    def columns_read(self) -> frozenset[str]:
        return frozenset(self.names)

    def columns_written(self) -> frozenset[str]:
        return frozenset(self.names)

    def filter_routes(self) -> tuple[tuple[int, ...], ...]:
        return ((0,),)  # the rows of one exploded row share every other column's value

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return _plus(required, self.columns_read())


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Rename(PlanNode):
    """Rename columns (old -> new).

    Names are checked by ``Frame.rename``; the node itself skips names that are gone
    (an optimizer rule may have pruned the LLM column it renamed, when nothing reads it).
    """

    mapping: tuple[tuple[str, str], ...]

    def _infer_schema(self) -> pl.Schema:
        mapping = dict(self.mapping)
        return pl.Schema({mapping.get(name, name): dtype for name, dtype in self.child.schema().items()})

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.rename(dict(self.mapping), strict=False)

    def columns_read(self) -> frozenset[str]:
        return frozenset(old for old, _ in self.mapping)

    def columns_written(self) -> frozenset[str]:
        present = set(self.child.columns)
        return frozenset(new for old, new in self.mapping if old in present and old != new)

    def row_effect(self) -> str:
        return "keep"

    def elementwise(self) -> bool:
        return True

    def source_column(self, column: str, index: int = 0) -> str | None:
        back = {new: old for old, new in self.mapping if old in set(self.child.columns)}
        return back.get(column, column) if column in self.columns else None

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        if required is None:
            return None
        return frozenset(self.source_column(c) or c for c in required)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Drop(PlanNode):
    """Drop columns.

    Names are checked by ``Frame.drop``; the node itself skips names that are gone
    (projection pruning removes an LLM node whose only use was to be dropped).
    """

    names: tuple[str, ...]

    def _infer_schema(self) -> pl.Schema:
        gone = set(self.names)
        return pl.Schema({name: dtype for name, dtype in self.child.schema().items() if name not in gone})

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        return lf.drop(list(self.names), strict=False)

    def columns_read(self) -> frozenset[str]:
        return frozenset()

    def row_effect(self) -> str:
        return "keep"

    def elementwise(self) -> bool:
        return True

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return None if required is None else required - set(self.names)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class _RowsByPosition(PlanNode):
    """Base of nodes that pick rows by position (they collect their input): same columns."""

    same_columns: ClassVar[bool] = True

    def empty(self) -> pl.LazyFrame:
        return self.child.empty()

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        return required

    def selection_columns(self) -> frozenset[str] | None:
        return frozenset()  # the rows picked depend on the row count and the seed only


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Sample(_RowsByPosition):
    """Seeded random sample of ``n`` rows or a ``fraction`` of the rows (see :func:`sample_indices`)."""

    n: int | None = None
    fraction: float | None = None
    seed: int = 0
    with_replacement: bool = False
    shuffle: bool = False

    def validate(self) -> None:
        if (self.n is None) == (self.fraction is None):
            raise PlanError("sample() needs exactly one of n=... or fraction=....")
        if self.n is not None and self.n < 0:
            raise PlanError(f"sample(n) must be >= 0, got {self.n}.")
        if self.fraction is not None and not (0 <= self.fraction <= 1 or self.with_replacement):
            raise PlanError(f"sample(fraction) must be in [0, 1] without replacement, got {self.fraction}.")

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        df = lf.collect()
        return df[sample_indices(df.height, n=self.n, fraction=self.fraction, seed=self.seed,
                                 with_replacement=self.with_replacement, shuffle=self.shuffle)].lazy()

    def columns_read(self) -> frozenset[str]:
        return frozenset()


def sample_indices(rows: int, *, n: int | None, fraction: float | None, seed: int,
                   with_replacement: bool = False, shuffle: bool = False) -> list[int]:
    """Row indices of a seeded sample: ``numpy.random.default_rng(seed).choice``.

    Numpy's generator is used (not polars' ``sample``) so that samples stay the same
    across polars versions; indices are sorted (input order kept) unless ``shuffle``.
    """
    size = n if n is not None else int(round((fraction or 0.0) * rows))
    if size > rows and not with_replacement:
        raise PlanError(f"sample(n={size}) is larger than the {rows} rows; use with_replacement=True or a smaller n.")
    if rows == 0 or size == 0:
        return []
    idx = np.random.default_rng(seed).choice(rows, size=size, replace=with_replacement)
    return idx.tolist() if shuffle else np.sort(idx).tolist()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SplitPart(_RowsByPosition):
    """One part of a seeded random split (``Frame.split``); original row order kept.

    Rows are shuffled with ``numpy.random.default_rng(seed)``; part sizes are
    ``round(fraction * rows)`` (the last part takes the remainder).
    """

    fractions: tuple[tuple[str, float], ...]
    part: str
    seed: int = 0

    def validate(self) -> None:
        names = [n for n, _ in self.fractions]
        if self.part not in names:
            raise PlanError(f"split part {self.part!r} is not one of {names}.")
        if len(set(names)) != len(names) or any(f < 0 for _, f in self.fractions):
            raise PlanError("split() needs distinct names and non-negative fractions.")
        total = sum(f for _, f in self.fractions)
        if abs(total - 1.0) > 1e-9:
            raise PlanError(f"split() fractions must sum to 1, got {total}: {dict(self.fractions)}.")

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # type: ignore[override]
        df = lf.collect()
        rows = df.height
        order = np.random.default_rng(self.seed).permutation(rows)
        start = 0
        for i, (name, frac) in enumerate(self.fractions):
            size = rows - start if i == len(self.fractions) - 1 else min(rows - start, round(frac * rows))
            if name == self.part:
                idx = np.sort(order[start : start + size])
                return df[idx.tolist()].lazy() if size else df.clear().lazy()
            start += size
        raise AssertionError("unreachable")

    def columns_read(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SQL(PlanNode):
    """A DuckDB SQL query over the inputs, each registered as a table under ``names``.

    DuckDB reads the inputs as Arrow tables and returns Arrow; one in-memory
    connection per execution (DuckDB 2's relations must be fully read before the
    next statement). The output schema is found by running the query on empty inputs.
    Row order is DuckDB's: add ORDER BY for a stable order.
    """

    n_children: ClassVar[int | None] = None
    query: str
    names: tuple[str, ...]

    def validate(self) -> None:
        if len(self.names) != len(self.children):
            raise PlanError(f"sql(): {len(self.names)} table names for {len(self.children)} frames.")
        if len(set(self.names)) != len(self.names) or not all(n.isidentifier() for n in self.names):
            raise PlanError(f"sql() table names must be distinct identifiers, got {list(self.names)}.")
        if not isinstance(self.query, str) or not self.query.strip():
            raise PlanError("sql() needs a query, e.g. \"SELECT * FROM self\".")

    def _infer_schema(self) -> pl.Schema:
        empties = [pl.DataFrame(schema=c.schema()) for c in self.children]
        return self._run(empties).schema

    def tree(self) -> exp.Expression | None:
        """The query parsed by sqlglot (DuckDB dialect); None when sqlglot cannot parse it."""
        return sql_tree(self.query)

    def columns_read(self) -> frozenset[str] | None:
        names = sql_names(self.query, self.names)
        if names is None:
            return None
        return frozenset(c for child in self.children for c in child.columns if c.lower() in names)

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        names = sql_names(self.query, self.names)
        if names is None:
            return None
        return frozenset(c for c in self.children[index].columns if c.lower() in names)

    def empty(self) -> pl.LazyFrame:
        return pl.LazyFrame(schema=self.schema())

    def apply(self, *inputs: pl.LazyFrame) -> pl.LazyFrame:
        return self._run([lf.collect() for lf in inputs]).lazy()

    def _run(self, frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
        try:
            import duckdb
        except ImportError as exc:
            raise MissingDependencyError("duckdb", "bash scripts/install.sh", "lazyllm.sql()") from exc
        con = duckdb.connect()
        try:
            for name, df in zip(self.names, frames):
                con.register(name, df.to_arrow())
            try:
                table = con.sql(self.query).to_arrow_table()
            except duckdb.Error as exc:
                first = str(exc).strip().split("\n")[0]
                raise PlanError(f"DuckDB rejects the query: {first}. Tables: {list(self.names)}; "
                                f"columns: {[list(df.columns) for df in frames]}.") from None
        finally:
            con.close()
        out = pl.from_arrow(table)
        assert isinstance(out, pl.DataFrame)
        return out


@functools.lru_cache(maxsize=256)
def sql_tree(query: str) -> exp.Expression | None:
    """``query`` parsed by sqlglot in DuckDB's dialect (None when it does not parse)."""
    try:
        return sqlglot.parse_one(query, read="duckdb")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def sql_names(query: str, tables: tuple[str, ...]) -> frozenset[str] | None:
    """Every identifier a query names, lower-cased (DuckDB matches names without case), or
    None when it may read any column: ``*`` (other than ``count(*)``), ``COLUMNS(...)``, a
    NATURAL join, a table used as a row value, or a query sqlglot cannot parse.

    A superset of the columns read (table names and aliases come along), which is safe for
    projection pruning.

    >>> sorted(sql_names("SELECT id, count(*) AS n FROM self WHERE Grp = 1 GROUP BY id", ("self",)))
    ['grp', 'id', 'n', 'self']
    >>> sql_names("SELECT * EXCLUDE (q) FROM self", ("self",)) is None
    True
    """
    tree = sql_tree(query)
    if tree is None or re.search(r"\bcolumns\s*\(|\bnatural\b", query, re.IGNORECASE):
        return None
    for star in tree.find_all(exp.Star):
        if not isinstance(star.parent, exp.Count):
            return None
    tables_like = {t.lower() for t in tables}
    tables_like |= {t.alias_or_name.lower() for t in tree.find_all(exp.Table)}
    tables_like |= {a.lower() for sub in tree.find_all(exp.Subquery) if (a := sub.alias)}
    for col in tree.find_all(exp.Column):
        if not col.table and col.name.lower() in tables_like:
            return None  # SELECT self FROM self: the whole row as a struct
    return frozenset(i.name.lower() for i in tree.find_all(exp.Identifier))


# ------------------------------------------------------------------------------------
# LLM nodes
# ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _templates(prompt: str, system: str | None) -> tuple[PromptTemplate, ...]:
    """The parsed prompt (and system) templates of an LLM node (parsed once)."""
    return (PromptTemplate.parse(prompt),) + ((PromptTemplate.parse(system),) if system is not None else ())


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LLMNode(PlanNode):
    """Base class of nodes that call an LLM once or more per row.

    A subclass says which requests a row needs (:meth:`requests_for`) and how their
    responses become output values (:meth:`combine`); the scheduler does the rest
    (cache, de-duplication, batching, pipelining). ``aliases`` map template
    variables to columns (``("question", "q")`` lets a template's ``{{ question }}``
    read column ``q``).
    """

    is_llm: ClassVar[bool] = True
    filters_rows: ClassVar[bool] = False  # True: keeps the rows the LLM accepts (row_effect "drop")
    #: Share of rows an LLM filter keeps when nothing better is known (the optimizer's prior).
    prior_pass_rate: ClassVar[float] = 0.5
    bound_vars: ClassVar[frozenset[str]] = frozenset()  # template variables the node supplies itself
    #: True when :meth:`requests_for` depends on the row only through the rendered messages
    #: (the scheduler then keys bulk-rendered rows without building their requests)
    requests_from_messages: ClassVar[bool] = False
    column: str
    model: ModelSpec
    prompt: str
    system: str | None = None
    sampling: SamplingParams = SamplingParams()
    aliases: tuple[tuple[str, str], ...] = ()
    error_column: str = ""

    def validate(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise PlanError(f"{self.kind}: the output column name must be a non-empty string.")
        if not isinstance(self.model, ModelSpec):
            raise PlanError(f"{self.kind}(model=...) needs a model spec, got {type(self.model).__name__}.")
        if not self.error_column:
            object.__setattr__(self, "error_column", f"{self.column}_error")
        if self.error_column in self.output_schema():
            raise PlanError("error_column must differ from the output columns.")
        check_columns([c for _, c in self.aliases], self.child.columns, where=f"{self.kind.lower()}() column mapping")
        check_columns(self.columns_read(), self.child.columns, where=f"{self.kind.lower()}({self.column!r}) prompt")

    def templates(self) -> list[PromptTemplate]:
        return list(_templates(self.prompt, self.system))

    def columns_read(self) -> frozenset[str]:
        alias_vars = {v for v, _ in self.aliases}
        cols: set[str] = {c for _, c in self.aliases}
        for t in self.templates():
            cols |= t.columns - alias_vars - self.bound_vars
        return frozenset(cols)

    def output_schema(self) -> dict[str, pl.DataType]:
        """The value columns this node adds (the error column comes on top)."""
        raise NotImplementedError

    def columns_written(self) -> frozenset[str]:
        return frozenset(self.output_schema()) | {self.error_column}

    def row_effect(self) -> str:
        return "drop" if self.filters_rows else "keep"

    def elementwise(self) -> bool:
        return True  # each row's requests are rendered from that row alone

    def required_from_child(self, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
        if required is None:
            return None
        return (required - self.columns_written()) | self.columns_read()

    def _infer_schema(self) -> pl.Schema:
        if self.same_columns:
            return self.child.schema()
        schema = dict(self.child.schema())
        schema.update(self.output_schema())
        schema[self.error_column] = pl.String()
        return pl.Schema(schema)

    def empty(self) -> pl.LazyFrame:
        if self._empty is None:
            cols = {**self.output_schema(), self.error_column: pl.String()}
            lf = self.child.empty().with_columns(pl.lit(None, dtype=d).alias(c) for c, d in cols.items())
            object.__setattr__(self, "_empty", lf)
        return self._empty  # type: ignore[return-value]

    # -- execution hooks -----------------------------------------------------------------
    def context(self, row: dict[str, Any]) -> dict[str, Any]:
        ctx = dict(row)
        for var, col in self.aliases:
            ctx[var] = row[col]
        return ctx

    def requests_per_row(self) -> int:
        """LLM requests one row needs (samples, both orders of a pairwise judge...)."""
        return 1

    def cost_per_row(self) -> float:
        """Estimated cost of one row, for ordering LLM work: USD with the model's prices,
        else tokens (prompt template characters / 4, plus ``max_tokens`` generated, or one
        token when the answer is constrained to choices), times the requests per row."""
        prompt = sum(len(t.source) for t in self.templates()) / 4 + 4
        constrained = bool(getattr(self, "choices", None)) or self.filters_rows
        out = 1.0 if constrained else float(self.sampling.max_tokens)
        prices = self.model.prices()
        per_request = (prompt * prices[0] + out * prices[1]) / 1e6 if prices else prompt + out
        return per_request * self.requests_per_row()

    def null_inputs(self, row: Mapping[str, Any]) -> list[str]:
        """The input columns a template reads that are null in ``row`` and that the template
        does not handle itself (``default``, ``if``, ``is none``): such a row is not sent."""
        alias = dict(self.aliases)
        out: set[str] = set()
        for t in self.templates():
            for var in t.columns - t.null_safe - self.bound_vars:
                col = alias.get(var, var)
                if col in row and row[col] is None:
                    out.add(col)
        return sorted(out)

    def null_error(self, columns: Sequence[str]) -> str:
        """The error of a row not sent because of the null inputs ``columns`` (:meth:`null_inputs`)."""
        named = ", ".join(map(repr, columns))
        return (f"input column(s) {named} null, so no request was sent (handle it in the template with "
                "{{ x | default('...') }} or {% if x %}, or filter the row out)")

    def messages(self, ctx: dict[str, Any]) -> tuple[Message, ...]:
        templates = self.templates()
        out = [Message("system", templates[1].render(ctx))] if self.system is not None else []
        out.append(Message("user", templates[0].render(ctx)))
        return tuple(out)

    def messages_column(self, df: pl.DataFrame) -> list[tuple[Message, ...] | None] | None:
        """The messages of every row of ``df`` rendered at once (polars), or None when they
        cannot be: a template that is not a plain concatenation of columns, a column type
        Jinja renders differently, or variables the node binds itself. Identical to
        :meth:`messages` row by row; None for a row with a null input (which sends nothing).

        Cost: one polars ``concat_str`` per template over the whole column.
        """
        if self.bound_vars:
            return None
        columns = {**{c: c for c in df.columns}, **dict(self.aliases)}
        templates = self.templates()
        user = render_column(templates[0], df, columns)
        system = render_column(templates[1], df, columns) if self.system is not None else None
        if user is None or (self.system is not None and system is None):
            return None
        if system is None:
            return [None if u is None else (Message("user", u),) for u in user.to_list()]
        return [None if s is None or u is None else (Message("system", s), Message("user", u))
                for s, u in zip(system.to_list(), user.to_list())]

    def requests_for(self, row: dict[str, Any], messages: tuple[Message, ...] | None = None) -> list[Request]:
        """The requests of one row (raises TemplateError when a template fails).

        ``messages``: the row's rendered template messages when already rendered in bulk
        (:meth:`messages_column`); rendered from ``row`` when None.
        """
        raise NotImplementedError

    def combine(self, responses: Sequence[Response]) -> tuple[dict[str, Any], str | None]:
        """Output values of one row from its responses (in request order), and an error."""
        raise NotImplementedError

    def failed_values(self) -> dict[str, Any]:
        """Output values of a row whose requests could not even be built (a template error)."""
        return {col: None for col in self.output_schema()}

    def row_values(self, values: dict[str, Any], row: Any) -> dict[str, Any]:
        """Output values of one row that also need the row itself (``row()`` returns its
        columns); :meth:`combine`'s ``values`` unchanged by default. Called once per row sent."""
        return values

    def check_input(self, df: pl.DataFrame) -> None:
        """Check the values of the input columns this node reads in ``df`` (the chain's input
        rows) before any request is sent; raise a :class:`~lazyllm.core.errors.PlanError`
        naming the column. Nothing to check by default."""


def _errors(responses: Sequence[Response], several: bool) -> list[str]:
    return [r.error if not several else f"request {i}: {r.error}" for i, r in enumerate(responses) if r.error]


def json_schema_dtype(schema: Mapping[str, Any]) -> pl.DataType:
    """The polars dtype of values matching a JSON schema (unknown shapes -> String of JSON)."""
    kind = schema.get("type")
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return pl.String()
    if kind == "object" and isinstance(schema.get("properties"), Mapping):
        return pl.Struct({name: json_schema_dtype(sub) for name, sub in schema["properties"].items()})
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return pl.List(json_schema_dtype(schema["items"]))
    return {"string": pl.String(), "integer": pl.Int64(), "number": pl.Float64(), "boolean": pl.Boolean()}.get(
        kind if isinstance(kind, str) else "", pl.String()
    )


def _to_dtype(value: Any, schema: Mapping[str, Any]) -> Any:
    """Shape a parsed JSON value for :func:`json_schema_dtype` (fallbacks become JSON text)."""
    dtype = json_schema_dtype(schema)
    if isinstance(dtype, pl.Struct) and isinstance(value, dict):
        return {k: _to_dtype(value.get(k), sub) for k, sub in schema["properties"].items()}
    if isinstance(dtype, pl.List) and isinstance(value, list):
        return [_to_dtype(v, schema["items"]) for v in value]
    if dtype == pl.String() and value is not None and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    return value


#: Roles a message of a conversation column may have.
CONVERSATION_ROLES = ("system", "user", "assistant")
#: What ``generate(reasoning=...)`` does with a reasoning model's trace.
REASONING_OPTIONS = ("drop", "keep")
#: The dtype of a conversation column that :class:`Generate` writes (``append_to``).
CONVERSATION_DTYPE = pl.List(pl.Struct({"role": pl.String(), "content": pl.String()}))


def check_conversation_dtype(column: str, dtype: pl.DataType, where: str) -> None:
    """Raise PlanError unless ``dtype`` is a list of structs with String ``role`` and ``content``."""
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    fields = {f.name: f.dtype for f in inner.fields} if isinstance(inner, pl.Struct) else {}
    if fields.get("role") != pl.String() or fields.get("content") != pl.String():
        raise PlanError(f"{where}: column {column!r} is {dtype}, not a conversation. A conversation column holds "
                        "lists of {role, content} structs (String fields), as the Hub's chat datasets store them, "
                        "e.g. [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}].")


def conversation_messages(value: Sequence[Mapping[str, Any]], column: str) -> tuple[Message, ...]:
    """The messages of one conversation value (raises TemplateError on a bad message)."""
    out: list[Message] = []
    for k, m in enumerate(value):
        role = m.get("role") if isinstance(m, Mapping) else None
        content = m.get("content") if isinstance(m, Mapping) else None
        if role not in CONVERSATION_ROLES or not isinstance(content, str):
            raise TemplateError(f"conversation column {column!r}, message {k}: {m!r} is not a message with a role in "
                                f"{list(CONVERSATION_ROLES)} and a String content.")
        out.append(Message(role, content))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Generate(LLMNode):
    """Generate ``column`` with an LLM from a Jinja2 ``prompt`` over each row.

    Output: every input row and column, in order, plus ``column`` and
    ``error_column`` (String, null when the row succeeded). ``column`` is String;
    with ``choices`` one of the labels; with ``json_schema`` a Struct of the parsed
    fields; a List of those when ``n > 1`` (sample ``i`` at index ``i``).

    ``reasoning="keep"`` adds ``f"{column}_reasoning"`` (String, or a List with
    ``n > 1``): a reasoning model's trace, apart from the answer in ``column``
    (``"drop"``, the default, adds nothing). ``conversation`` names a column of
    chat messages sent before the ``prompt`` turn (an empty ``prompt``: none) and after
    the ``system`` message. ``append_to`` adds a conversation column: the request's
    messages without the system message, then the answer as an assistant message.
    The three are left out of the fingerprint while at their defaults.
    """

    requests_from_messages: ClassVar[bool] = True

    n: int = 1
    choices: tuple[str, ...] | None = None
    json_schema: str | None = None  # canonical JSON text
    reasoning: str = "drop"
    conversation: str | None = None
    append_to: str | None = None

    def fingerprint_params(self) -> dict[str, Any]:
        out = LLMNode.fingerprint_params(self)
        for name, default in (("reasoning", "drop"), ("conversation", None), ("append_to", None)):
            if out[name] == default:  # added later: plans without them keep their fingerprints
                del out[name]
        return out

    def validate(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise PlanError(f"generate(n=...) must be a positive int, got {self.n!r}.")
        if self.reasoning not in REASONING_OPTIONS:
            raise PlanError(f"generate(reasoning={self.reasoning!r}) is not an option; choose one of "
                            f"{list(REASONING_OPTIONS)} (keep: the trace in a column of its own; drop: no trace).")
        if self.conversation is not None:
            check_columns([self.conversation], self.child.columns, where="generate(messages=...)")
            check_conversation_dtype(self.conversation, self.child.schema()[self.conversation],
                                     "generate(messages=...)")
        elif not self.prompt:
            raise PlanError("generate() needs a prompt=... template, or messages=... (a conversation column).")
        if self.append_to is not None:
            if not isinstance(self.append_to, str) or not self.append_to:
                raise PlanError("generate(append_to=...) must be a non-empty column name.")
            if self.n > 1:
                raise PlanError("generate(append_to=...) continues one conversation per row: use n=1 (with n > 1 "
                                "there is no single answer to append).")
        if self.choices is not None and self.json_schema is not None:
            raise PlanError("generate() takes choices=... or json_schema=..., not both.")
        if self.choices is not None and (not self.choices or not all(isinstance(c, str) and c for c in self.choices)):
            raise PlanError(f"choices must be a non-empty list of non-empty strings, got {self.choices!r}.")
        if self.json_schema is not None:
            try:
                schema = json.loads(self.json_schema)
            except (TypeError, ValueError) as exc:
                raise PlanError(f"json_schema is not valid JSON: {exc}.") from None
            if not isinstance(schema, dict):
                raise PlanError("json_schema must be a JSON object (a JSON schema).")
        LLMNode.validate(self)

    def schema_dict(self) -> dict[str, Any] | None:
        return None if self.json_schema is None else json.loads(self.json_schema)

    def requests_per_row(self) -> int:
        return self.n

    def value_dtype(self) -> pl.DataType:
        schema = self.schema_dict()
        return json_schema_dtype(schema) if schema is not None else pl.String()

    @property
    def reasoning_column(self) -> str:
        return f"{self.column}_reasoning"

    def output_schema(self) -> dict[str, pl.DataType]:
        dtype = self.value_dtype()
        out: dict[str, pl.DataType] = {self.column: pl.List(dtype) if self.n > 1 else dtype}
        if self.reasoning == "keep":
            out[self.reasoning_column] = pl.List(pl.String()) if self.n > 1 else pl.String()
        if self.append_to is not None:
            out[self.append_to] = CONVERSATION_DTYPE
        return out

    def columns_read(self) -> frozenset[str]:
        cols = LLMNode.columns_read(self)
        return cols | {self.conversation} if self.conversation is not None else cols

    def null_inputs(self, row: Mapping[str, Any]) -> list[str]:
        out = LLMNode.null_inputs(self, row)
        if self.conversation is not None and not row.get(self.conversation):  # null or empty: nothing to send
            out = sorted({*out, self.conversation})
        return out

    def null_error(self, columns: Sequence[str]) -> str:
        if self.conversation not in columns:
            return LLMNode.null_error(self, columns)
        others = [c for c in columns if c != self.conversation]
        return (f"conversation column {self.conversation!r} null or empty"
                + (f" (and input column(s) {', '.join(map(repr, others))} null)" if others else "")
                + ", so no request was sent (filter such rows out, e.g. "
                f".filter(pl.col({self.conversation!r}).list.len() > 0))")

    def messages(self, ctx: dict[str, Any]) -> tuple[Message, ...]:
        if self.conversation is None:
            return LLMNode.messages(self, ctx)
        templates = self.templates()
        out = [Message("system", templates[1].render(ctx))] if self.system is not None else []
        out.extend(conversation_messages(ctx[self.conversation], self.conversation))
        if self.prompt:
            out.append(Message("user", templates[0].render(ctx)))
        return tuple(out)

    def messages_column(self, df: pl.DataFrame) -> list[tuple[Message, ...] | None] | None:
        if self.conversation is not None:
            return None  # rendered row by row
        return LLMNode.messages_column(self, df)

    def check_input(self, df: pl.DataFrame) -> None:
        """Every message of the conversation column (when it is an input column) has a role in
        :data:`CONVERSATION_ROLES` and a String content; raises PlanError naming the first bad row.

        Cost: one polars expression over the column."""
        c = self.conversation
        if c is None or c not in df.columns:
            return
        msg = pl.element().struct
        ok = df.select(pl.col(c).list.eval(msg.field("role").is_in(list(CONVERSATION_ROLES)).fill_null(False)
                                           & msg.field("content").is_not_null()).list.all()).to_series()
        bad = ok.not_().fill_null(False).arg_true()
        if len(bad):
            r = int(bad[0])
            roles = [None if m is None else m.get("role") for m in df[c][r]]
            raise PlanError(f"generate(messages={c!r}): row {r} (and {len(bad) - 1} more) holds a message whose role is "
                            f"not one of {list(CONVERSATION_ROLES)} or whose content is null (roles {roles}). "
                            "Fix or filter those rows before generate(), e.g. .filter(...) on the column.")

    def requests_for(self, row: dict[str, Any], messages: tuple[Message, ...] | None = None) -> list[Request]:
        messages = messages or self.messages(self.context(row))
        return [
            Request(messages=messages, params=self.sampling, sample_index=s, choices=self.choices,
                    json_schema=self.json_schema)
            for s in range(self.n)
        ]

    def parse(self, text: str) -> Any:
        """The value of one answer (raises ValueError when it breaks the constraint)."""
        value = parse_answer(text, self.choices, self.json_schema)
        schema = self.schema_dict()
        return _to_dtype(value, schema) if schema is not None else value

    def combine(self, responses: Sequence[Response]) -> tuple[dict[str, Any], str | None]:
        values: list[Any] = []
        traces: list[str | None] = []
        errors: list[str] = []
        for i, r in enumerate(responses):
            prefix = f"sample {i}: " if self.n > 1 else ""
            if self.choices is None and self.json_schema is None:  # a constrained answer is never a trace
                r = split_response(r)  # an inline trace in a response cached before engines split them
            traces.append(r.reasoning)
            if r.error is not None or r.text is None:
                values.append(None)
                errors.append(prefix + (r.error or "no text"))
                continue
            if r.reasoning is not None and not r.text and r.finish_reason == "length":
                values.append(None)
                errors.append(prefix + "max_tokens ran out inside the reasoning trace, before any answer: raise "
                                       "max_tokens (the trace counts against it)")
                continue
            try:
                values.append(self.parse(r.text))
            except ValueError as exc:
                values.append(None)
                errors.append(prefix + str(exc))
        out = {self.column: values if self.n > 1 else values[0]}
        if self.reasoning == "keep":
            out[self.reasoning_column] = traces if self.n > 1 else traces[0]
        if self.append_to is not None:  # the answer text; row_values makes it the conversation
            out[self.append_to] = responses[0].text if values[0] is not None else None
        return out, ("; ".join(errors) if errors else None)

    def row_values(self, values: dict[str, Any], row: Any) -> dict[str, Any]:
        if self.append_to is None or values.get(self.append_to) is None:
            return values
        messages = self.messages(self.context(row()))[1 if self.system is not None else 0:]
        answer = values[self.append_to]
        if self.choices is None and self.json_schema is None:
            answer = split_response(Response(text=answer)).text
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        return {**values, self.append_to: conversation + [{"role": "assistant", "content": answer}]}


#: Judge methods: the constrained argmax score, or the expectation under the judge's distribution (G-Eval).
JUDGE_METHODS = ("argmax", "expected")


def _choice_probs(response: Response, n: int) -> list[float] | None:
    """The response's distribution over its request's ``n`` choices (normalised), or None."""
    lps = response.choice_logprobs
    if lps is None or len(lps) != n:
        return None
    return normalize(lps)


def _check_logprobs(model: ModelSpec, what: str, instead: str) -> None:
    if not model.supports_logprobs():
        raise PlanError(f"{what} needs log-probabilities, which {model.display_name} does not give. "
                        f"Use {instead}, or a model that returns logprobs (transformers, vLLM, a vLLM server).")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Judge(LLMNode):
    """Single-answer grading: a score in ``scale`` per row (MT-Bench style).

    ``method="argmax"``: the answer is constrained to the integers of the scale (or,
    with ``rationale``, to JSON ``{"rationale": str, "score": int}``), so no free
    text is parsed by guesswork; ``column`` is Int64.

    ``method="expected"``: the score is the expectation of the judge's distribution
    over the scale's tokens, ``sum_s s * P(s)`` (G-Eval: Liu et al. 2023, "G-Eval:
    NLG Evaluation using GPT-4 with Better Human Alignment"), from one request with
    ``logprobs`` (a prefill, no sampling loop); ``column`` is Float64 and
    ``f"{column}_probs"`` (List(Float64), ``hi - lo + 1`` values, score ``lo`` first,
    summing to 1) keeps the distribution.

    Output: ``column``, ``f"{column}_rationale"`` (String) when ``rationale`` is set,
    ``f"{column}_probs"`` with ``method="expected"``, and the error column.
    """

    requests_from_messages: ClassVar[bool] = True

    scale: tuple[int, int] = (1, 10)
    rationale: bool = False
    method: str = "argmax"

    def validate(self) -> None:
        lo, hi = self.scale
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo >= hi or hi - lo > 100:
            raise PlanError(f"judge(scale=...) must be two ints (low, high) with low < high, got {self.scale!r}.")
        if self.method not in JUDGE_METHODS:
            raise PlanError(f"judge(method={self.method!r}) is not a judge method; choose one of {list(JUDGE_METHODS)}.")
        if self.method == "expected" and self.rationale:
            raise PlanError("judge(method='expected') reads the distribution of the score token, so it takes no "
                            "rationale: use rationale=False, or method='argmax' with a rationale.")
        LLMNode.validate(self)
        if self.method == "expected":
            _check_logprobs(self.model, "judge(method='expected')", "method='argmax'")

    @property
    def rationale_column(self) -> str:
        return f"{self.column}_rationale"

    @property
    def probs_column(self) -> str:
        return f"{self.column}_probs"

    def output_schema(self) -> dict[str, pl.DataType]:
        if self.method == "expected":
            return {self.column: pl.Float64(), self.probs_column: pl.List(pl.Float64())}
        out: dict[str, pl.DataType] = {self.column: pl.Int64()}
        if self.rationale:
            out[self.rationale_column] = pl.String()
        return out

    def scores(self) -> tuple[int, ...]:
        lo, hi = self.scale
        return tuple(range(lo, hi + 1))

    def constraint(self) -> tuple[tuple[str, ...] | None, str | None]:
        lo, hi = self.scale
        if not self.rationale:
            return tuple(str(v) for v in self.scores()), None
        schema = {
            "type": "object",
            "properties": {"rationale": {"type": "string", "maxLength": 600},
                           "score": {"type": "integer", "minimum": lo, "maximum": hi}},
            "required": ["rationale", "score"],
            "additionalProperties": False,
        }
        return None, json.dumps(schema, sort_keys=True, separators=(",", ":"))

    def requests_for(self, row: dict[str, Any], messages: tuple[Message, ...] | None = None) -> list[Request]:
        choices, schema = self.constraint()
        return [Request(messages=messages or self.messages(self.context(row)), params=self.sampling, choices=choices,
                        json_schema=schema, logprobs=self.method == "expected")]

    def combine(self, responses: Sequence[Response]) -> tuple[dict[str, Any], str | None]:
        out: dict[str, Any] = {c: None for c in self.output_schema()}
        r = responses[0]
        if r.error is not None or r.text is None:
            return out, r.error or "no text"
        lo, hi = self.scale
        if self.method == "expected":
            probs = _choice_probs(r, hi - lo + 1)
            if probs is None:
                return out, (f"the engine returned no probability for any score in [{lo}, {hi}] "
                             "(log-probabilities missing or all -inf)")
            out[self.column] = float(sum(s * p for s, p in zip(self.scores(), probs)))
            out[self.probs_column] = probs
            return out, None
        text = r.text.strip()
        try:
            if self.rationale:
                value = json.loads(text)
                score, why = value["score"], value["rationale"]
                out[self.rationale_column] = str(why)
            else:
                score = int(text)
            if not isinstance(score, int) or isinstance(score, bool) or not lo <= score <= hi:
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            return out, f"the judge's answer {text[:200]!r} is not a score in [{lo}, {hi}]"
        out[self.column] = score
        return out, None


#: MT-Bench's verdict letters: "A", "B", and "C" for a tie.
VERDICTS = ("A", "B", "C")
#: Pairwise methods: balanced position calibration over probabilities, or strict both-orders agreement.
PAIRWISE_METHODS = ("calibrated", "strict")
#: Default tie margin of calibrated pairwise verdicts (see :class:`PairwiseJudge`).
TIE_MARGIN = 0.1


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PairwiseJudge(LLMNode):
    """Pairwise comparison of columns ``a`` and ``b``: ``column`` is "a", "b" or "tie".

    The template reads the two answers as ``{{ answer_a }}`` and ``{{ answer_b }}``
    (the order shown to the judge); the verdict is one of MT-Bench's letters "A",
    "B", "C" (tie). With ``swap`` (default) each pair is judged in both orders.

    ``method="calibrated"`` (default): each order returns the judge's probabilities
    of the three letters; the preference for each answer is averaged over the two
    positions it was shown in (balanced position calibration: Wang et al. 2023,
    "Large Language Models are not Fair Evaluators"):
    ``p_a = (P_ab(A) + P_ba(B)) / 2`` and ``p_b = (P_ab(B) + P_ba(A)) / 2``. The
    margin is ``p_a - p_b`` in [-1, 1]; the verdict is "a" when it exceeds
    ``tie_margin``, "b" when it is below ``-tie_margin``, else "tie". A judge that
    always prefers the first position gets margin 0 from that bias alone.

    ``method="strict"``: the most probable letter of each order (constrained
    decoding); only a verdict both orders agree on counts, otherwise a tie
    (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").
    The margin is the share of orders preferring a minus the share preferring b.

    Cost: 2 LLM calls per row (1 without ``swap``); calibrated calls are a prefill
    each (no sampling loop). Output: ``column``, ``f"{column}_margin"`` (Float64),
    ``f"{column}_verdicts"`` (List(String): the most probable letter of each order)
    and the error column.
    """

    bound_vars: ClassVar[frozenset[str]] = frozenset({"answer_a", "answer_b"})
    a: str
    b: str
    swap: bool = True
    method: str = "calibrated"
    tie_margin: float = TIE_MARGIN

    def validate(self) -> None:
        if self.method not in PAIRWISE_METHODS:
            raise PlanError(f"judge_pairwise(method={self.method!r}) is not a pairwise method; "
                            f"choose one of {list(PAIRWISE_METHODS)}.")
        if not isinstance(self.tie_margin, (int, float)) or not 0 <= self.tie_margin < 1:
            raise PlanError(f"judge_pairwise(tie_margin=...) must be a number in [0, 1), got {self.tie_margin!r}.")
        check_columns([self.a, self.b], self.child.columns, where="judge_pairwise()")
        LLMNode.validate(self)
        if self.method == "calibrated":
            _check_logprobs(self.model, "judge_pairwise(method='calibrated')", "method='strict'")

    def columns_read(self) -> frozenset[str]:
        return LLMNode.columns_read(self) | {self.a, self.b}

    @property
    def verdicts_column(self) -> str:
        return f"{self.column}_verdicts"

    @property
    def margin_column(self) -> str:
        return f"{self.column}_margin"

    def output_schema(self) -> dict[str, pl.DataType]:
        return {self.column: pl.String(), self.margin_column: pl.Float64(),
                self.verdicts_column: pl.List(pl.String())}

    def requests_for(self, row: dict[str, Any], messages: tuple[Message, ...] | None = None) -> list[Request]:
        # the template reads answer_a / answer_b, bound per order: never rendered in bulk
        ctx = self.context(row)
        orders = [(self.a, self.b), (self.b, self.a)] if self.swap else [(self.a, self.b)]
        return [
            Request(messages=self.messages({**ctx, "answer_a": row[first], "answer_b": row[second]}),
                    params=self.sampling, choices=VERDICTS, logprobs=self.method == "calibrated")
            for first, second in orders
        ]

    def combine(self, responses: Sequence[Response]) -> tuple[dict[str, Any], str | None]:
        errors = _errors(responses, several=len(responses) > 1)
        letters = [(r.text or "").strip() if r.error is None else None for r in responses]
        bad = [t for t in letters if t is not None and t not in VERDICTS]
        empty = {self.column: None, self.margin_column: None, self.verdicts_column: letters}
        if errors or bad:
            msg = "; ".join(errors + [f"verdict {t!r} is not one of {list(VERDICTS)}" for t in bad])
            return empty, msg
        if self.method == "calibrated":
            probs = [_choice_probs(r, len(VERDICTS)) for r in responses]
            if any(p is None for p in probs):
                return empty, "the engine returned no verdict probabilities (log-probabilities missing or all -inf)"
            p_a = [probs[0][0]] + ([probs[1][1]] if len(probs) > 1 else [])  # type: ignore[index]
            p_b = [probs[0][1]] + ([probs[1][0]] if len(probs) > 1 else [])  # type: ignore[index]
            margin = sum(p_a) / len(p_a) - sum(p_b) / len(p_b)
        else:
            votes = [{"A": 1, "B": -1, "C": 0}[t] for t in letters]  # type: ignore[index]
            if len(votes) > 1:
                votes[1] = -votes[1]  # the second order was swapped
            margin = sum(votes) / len(votes)
        if self.method == "strict":
            verdict = "a" if margin == 1 else "b" if margin == -1 else "tie"
        else:
            verdict = "a" if margin > self.tie_margin else "b" if margin < -self.tie_margin else "tie"
        return {self.column: verdict, self.margin_column: float(margin), self.verdicts_column: letters}, None


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LLMFilter(LLMNode):
    """Keep the rows an LLM answers "yes" for (constrained to "yes"/"no").

    Rows answered "no", and rows whose request failed, are dropped; the output
    schema is the input's. Cost: 1 LLM call per row reaching the filter.
    """

    requests_from_messages: ClassVar[bool] = True
    filters_rows: ClassVar[bool] = True
    same_columns: ClassVar[bool] = True
    column: str = "__lazyllm_keep__"

    def output_schema(self) -> dict[str, pl.DataType]:
        return {self.column: pl.Boolean()}

    def columns_written(self) -> frozenset[str]:
        return frozenset()  # nothing visible: the verdict column is internal

    def empty(self) -> pl.LazyFrame:
        return self.child.empty()

    def failed_values(self) -> dict[str, Any]:
        return {self.column: False}  # a row whose question failed is not kept

    def requests_for(self, row: dict[str, Any], messages: tuple[Message, ...] | None = None) -> list[Request]:
        return [Request(messages=messages or self.messages(self.context(row)), params=self.sampling,
                        choices=("yes", "no"))]

    def combine(self, responses: Sequence[Response]) -> tuple[dict[str, Any], str | None]:
        r = responses[0]
        if r.error is not None or r.text is None:
            return {self.column: False}, r.error or "no text"
        answer = r.text.strip().lower()
        if answer not in ("yes", "no"):
            return {self.column: False}, f"answer {r.text[:100]!r} is not 'yes' or 'no'"
        return {self.column: answer == "yes"}, None


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Reward(LLMNode):
    """Score each row with a sequence-classification reward model: ``column`` (Float64).

    The conversation scored is the optional ``system`` turn, the user turn rendered
    from ``prompt``, and column ``response`` as the assistant's turn (the format
    TRL's ``RewardTrainer`` trains on). Nothing is generated: one forward pass of the
    reward model per row. Cost: 1 request per row (cached like any LLM call).
    Output: ``column`` and the error column.
    """

    response: str

    def validate(self) -> None:
        check_columns([self.response], self.child.columns, where="reward(response=...)")
        if self.model.provider not in ("transformers", "test"):
            raise PlanError(f"reward() runs a sequence-classification model on the transformers engine; "
                            f"{self.model.display_name} cannot. Pass a trained RewardModel handle, a reward model "
                            "folder or hub id, or lazyllm.Transformers(<reward model>).")
        LLMNode.validate(self)

    def columns_read(self) -> frozenset[str]:
        return LLMNode.columns_read(self) | {self.response}

    def output_schema(self) -> dict[str, pl.DataType]:
        return {self.column: pl.Float64()}

    def requests_for(self, row: dict[str, Any], messages: tuple[Message, ...] | None = None) -> list[Request]:
        ctx = self.context(row)
        answer = row[self.response]
        if answer is None:
            raise TemplateError(f"reward(): the response column {self.response!r} is null in this row")
        messages = (*(messages or self.messages(ctx)), Message("assistant", str(answer)))
        return [Request(messages=messages, params=self.sampling, reward=True)]

    def combine(self, responses: Sequence[Response]) -> tuple[dict[str, Any], str | None]:
        r = responses[0]
        if r.error is not None or r.score is None:
            return {self.column: None}, r.error or "the engine returned no reward score"
        return {self.column: float(r.score)}, None
