"""Expression helpers shared by the rules: conjunctions and column renames.

Polars offers no public API to take an expression apart, so these work on its JSON
serialization (``Expr.meta.serialize(format="json")``) and build the parts back with
``Expr.deserialize``; anything they do not recognise is left whole.
"""

from __future__ import annotations

import functools
import io
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

__all__ = ["conjuncts", "conjoin", "rename_columns"]


def _tree(expr: pl.Expr) -> Any:
    return json.loads(expr.meta.serialize(format="json"))


def _expr(tree: Any) -> pl.Expr:
    return pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json")


def conjuncts(expr: pl.Expr) -> list[pl.Expr]:
    """The operands of a top-level ``&`` chain, left to right (the expression itself otherwise).

    >>> [str(e) for e in conjuncts((pl.col("a") > 1) & (pl.col("b") == 2) & pl.col("c"))]
    ['[(col("a")) > (dyn int: 1)]', '[(col("b")) == (dyn int: 2)]', 'col("c")']
    """
    out: list[Any] = []

    def split(tree: Any) -> None:
        node = tree.get("BinaryExpr") if isinstance(tree, dict) else None
        if isinstance(node, dict) and node.get("op") == "And":
            split(node["left"])
            split(node["right"])
        else:
            out.append(tree)

    split(_tree(expr))
    return [expr] if len(out) == 1 else [_expr(t) for t in out]


def conjoin(exprs: Sequence[pl.Expr]) -> pl.Expr:
    """``e0 & e1 & ...`` (the conjunction of several predicates)."""
    return functools.reduce(operator.and_, exprs)


def rename_columns(expr: pl.Expr, name: Callable[[str], str] | Mapping[str, str]) -> pl.Expr:
    """The expression with every column reference ``c`` replaced by ``name(c)``.

    >>> rename_columns(pl.col("a") > pl.col("b"), {"a": "x"}).meta.root_names()
    ['x', 'b']
    """
    fn = name.get if isinstance(name, Mapping) else None
    rename: Callable[[str], str] = (lambda c: fn(c, c)) if fn is not None else name  # type: ignore[assignment, misc]

    def sub(tree: Any) -> Any:
        if isinstance(tree, dict):
            return {k: (rename(v) if k == "Column" and isinstance(v, str) else sub(v)) for k, v in tree.items()}
        if isinstance(tree, list):
            return [sub(v) for v in tree]
        return tree

    return _expr(sub(_tree(expr)))
