"""Checks of the values a user passes to operators and model specs, before anything runs.

Every Frame operator calls these when it is called (not at ``collect()``), so a bad
value is reported before any model is loaded or any request is sent, as a
:mod:`lazyllm.errors` class whose message names the parameter, shows the value,
states what is allowed and ends with the fix:

- :class:`~lazyllm.errors.ParameterError` (a ``PlanError``, ``ValueError`` and
  ``TypeError``): a value of the wrong type or out of range;
- :class:`~lazyllm.errors.PlanError`: an invalid JSON Schema, an output column that
  already exists (unless ``overwrite=True``), a pairwise judge of a column against
  itself, a split part that is empty by construction, a prompt that reads a binary
  or object column;
- :class:`~lazyllm.errors.ModelNotFoundError`: a local model folder without config
  or tokenizer, or a folder path that does not exist.

Degenerate inputs that may be intended only warn (:class:`EmptyInputWarning`): an
in-memory source without rows, a split part that rounds to no rows, a prompt that
reads a column whose values are all missing.

>>> sampling("generate", temperature=0.7, top_p=1, max_tokens=16, seed=0)
SamplingParams(temperature=0.7, top_p=1.0, max_tokens=16, seed=0, stop=())
>>> sampling("generate", temperature="hot")
Traceback (most recent call last):
...
lazyllm.core.errors.ParameterError: generate(temperature='hot'): expected a number >= 0, got a str. Pass a number such as 0.0 (greedy) or 0.7.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lazyllm.core.errors import ModelNotFoundError, ParameterError, PlanError
from lazyllm.core.protocols import SamplingParams
from lazyllm.planner.nodes import DataFrameSource

__all__ = [
    "EmptyInputWarning",
    "number",
    "integer",
    "sampling",
    "scale",
    "known_rows",
    "stop_strings",
    "column_name",
    "choices",
    "check_json_schema",
    "check_outputs",
    "check_node",
    "check_pairwise",
    "check_concat",
    "check_source_rows",
    "check_split",
    "check_model_folder",
    "check_template_types",
    "check_model_path",
]


class EmptyInputWarning(UserWarning):
    """An input that yields no rows: every operator after it does nothing (and costs nothing)."""


def _kind(value: Any) -> str:
    return "a bool" if isinstance(value, bool) else f"a {type(value).__name__}"


def number(op: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, example: str = "") -> float:
    """``value`` as a float, checked to be a finite real number in the range; else :class:`ParameterError`."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    want = "a number" + (" " + " and ".join(bounds) if bounds else "")
    fix = f" Pass {example}." if example else f" Pass {want}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"{op}({name}={value!r}): expected {want}, got {_kind(value)}.{fix}")
    out = float(value)
    if (not math.isfinite(out) or (low is not None and (out <= low if low_open else out < low))
            or (high is not None and out > high)):
        raise ParameterError(f"{op}({name}={value!r}): expected {want}.{fix}")
    return out


def integer(op: str, name: str, value: Any, *, low: int | None = None, example: str = "") -> int:
    """``value`` as an int (not a bool, not a float) ``>= low``; else :class:`ParameterError`."""
    want = "an int" + (f" >= {low}" if low is not None else "")
    fix = f" Pass {example}." if example else f" Pass {want}."
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{op}({name}={value!r}): expected {want}, got {_kind(value)}.{fix}")
    if low is not None and value < low:
        raise ParameterError(f"{op}({name}={value!r}): expected {want}.{fix}")
    return int(value)


def stop_strings(op: str, stop: Any) -> tuple[str, ...]:
    """``stop`` (None, a string or a list of strings) as a tuple of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise ParameterError(f"{op}(stop={stop!r}): expected a non-empty string or a list of them. "
                             "Pass e.g. stop='\\n\\n' or stop=['###', 'END'].")
    return tuple(items)


def sampling(op: str, *, temperature: Any = 0.0, top_p: Any = 1.0, max_tokens: Any = 256, seed: Any = 0,
             stop: Any = None) -> SamplingParams:
    """Checked :class:`SamplingParams` for operator ``op``.

    Raises
    ------
    ParameterError
        A value of the wrong type (``temperature="hot"``) or out of range
        (``top_p=0``, ``max_tokens=0``).
    """
    return SamplingParams(
        temperature=number(op, "temperature", temperature, low=0.0, example="a number such as 0.0 (greedy) or 0.7"),
        top_p=number(op, "top_p", top_p, low=0.0, high=1.0, low_open=True, example="a number in (0, 1], e.g. 0.95"),
        max_tokens=integer(op, "max_tokens", max_tokens, low=1, example="a positive int such as 256"),
        seed=integer(op, "seed", seed, example="an int such as 0"),
        stop=stop_strings(op, stop),
    )


def column_name(op: str, name: str, value: Any) -> str:
    """``value`` checked to be a non-empty column name."""
    if not isinstance(value, str) or not value:
        raise ParameterError(f"{op}({name}={value!r}): expected a column name (a non-empty str), got "
                             f"{_kind(value)}. Pass the name as a string, e.g. {name}='answer'.")
    return value


def choices(op: str, value: Any) -> tuple[str, ...] | None:
    """``value`` (None or a list of labels) as a tuple of distinct non-empty strings."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ParameterError(f"{op}(choices={value!r}): expected a list of labels, got {_kind(value)}. "
                             "Pass e.g. choices=['yes', 'no'].")
    labels = tuple(value)
    if not labels or not all(isinstance(c, str) and c for c in labels) or len(set(labels)) != len(labels):
        raise ParameterError(f"{op}(choices={value!r}): expected distinct non-empty strings. "
                             "Pass e.g. choices=['positive', 'negative'].")
    return labels


def check_json_schema(op: str, schema: Mapping[str, Any]) -> None:
    """Raise :class:`PlanError` unless ``schema`` is a valid JSON Schema (checked against its metaschema).

    Uses ``jsonschema``'s validator for the schema's ``$schema`` draft (default: the
    latest draft) and its ``check_schema``.
    """
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise PlanError(f"{op}(json_schema=...): not a valid JSON Schema at {where}: {exc.message}. Fix the schema "
                        "(for example 'type' must be one of 'object', 'array', 'string', 'number', 'integer', "
                        "'boolean', 'null'), or pass a pydantic model class.") from None


def check_outputs(op: str, existing: Sequence[str], written: Iterable[str], overwrite: bool) -> None:
    """Raise :class:`PlanError` if an output column already exists in the frame, unless ``overwrite``."""
    if not isinstance(overwrite, bool):
        raise ParameterError(f"{op}(overwrite={overwrite!r}): expected True or False, got {_kind(overwrite)}.")
    clash = [c for c in written if c in existing]
    if clash and not overwrite:
        names = ", ".join(repr(c) for c in clash)
        raise PlanError(f"{op}() would replace the existing column(s) {names}. Existing columns: "
                        f"{', '.join(repr(c) for c in existing)}. Pick another output name, or pass "
                        "overwrite=True to replace them on purpose.")


def scale(value: Any) -> tuple[int, int]:
    """A judge's ``scale``: two ints ``(low, high)`` with ``low < high``."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) or value[0] >= value[1]):
        raise ParameterError(f"judge(scale={value!r}): expected two ints (low, high) with low < high. "
                             "Pass e.g. scale=(1, 10).")
    return int(value[0]), int(value[1])


def known_rows(node: Any) -> int | None:
    """Rows of ``node`` when it is an in-memory source (None when only a run can tell)."""
    return node.data.height if isinstance(node, DataFrameSource) else None


def check_node(op: str, existing: Sequence[str], node: Any, overwrite: bool) -> None:
    """The checks of an LLM node that need the built node: its output columns and its model's folder."""
    check_outputs(op, existing, node.columns_written(), overwrite)
    check_template_types(op, node.child.schema(), node.columns_read())
    model = node.model
    if getattr(model, "provider", None) in ("transformers", "vllm") and not getattr(model, "is_alias", True):
        check_model_folder(model.model, getattr(model, "gguf_file", None))
        check_model_path(model.model)


def check_template_types(op: str, schema: Mapping[str, Any], columns: Iterable[str]) -> None:
    """A prompt must not read a column whose values render as nothing useful.

    Binary and Python-object columns render as reprs of bytes or objects: an error.
    A column of dtype Null (every value missing) renders as "None": a warning.
    Lists and structs are fine (templates may loop over them).
    """
    import polars as pl

    bad = sorted(c for c in columns if c in schema and isinstance(schema[c], (pl.Binary, pl.Object)))
    if bad:
        kinds = ", ".join(f"{c!r} ({schema[c]})" for c in bad)
        raise PlanError(f"{op}(): the prompt reads {kinds}, which render as Python reprs, not text. Convert them "
                        "first, e.g. .with_columns(pl.col(name).cast(pl.String)) or decode the bytes.")
    empty = sorted(c for c in columns if c in schema and isinstance(schema[c], pl.Null))
    if empty:
        warnings.warn(f"{op}(): the prompt reads {empty}, whose values are all missing (dtype Null): every "
                      "prompt will say 'None' there. Check the data.", EmptyInputWarning, stacklevel=4)


def check_model_path(model: str) -> None:
    """A model name shaped like a path (``/...``, ``./...``, ``a/b/c``) must be an existing folder.

    A Hub id (``org/name``) is not checked here: while offline, a collect whose answers
    are all cached must still run without the model, so an uncached Hub id is reported
    when the engine first needs it (a ``ModelNotFoundError`` naming ``HF_HUB_OFFLINE``).
    """
    if Path(model).expanduser().is_dir():
        return
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"The model folder {model!r} does not exist. Pass an existing folder (with "
                                 "config.json, the tokenizer and the weights), an alias or a Hub id.")


def check_concat(schemas: Sequence[Mapping[str, Any]], how: str) -> None:
    """Vertical ``concat`` needs the same columns (names, order and, unless relaxed, dtypes) in every frame."""
    if how not in ("vertical", "vertical_relaxed"):
        return
    first = dict(schemas[0])
    for i, schema in enumerate(schemas[1:], start=1):
        other = dict(schema)
        missing = [c for c in first if c not in other]
        extra = [c for c in other if c not in first]
        dtypes = [f"{c}: {first[c]} vs {other[c]}" for c in first
                  if c in other and first[c] != other[c] and how == "vertical"]
        order = not missing and not extra and list(first) != list(other)
        if missing or extra or dtypes or order:
            parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else []) + \
                ([f"different dtypes ({'; '.join(dtypes)})"] if dtypes else []) + \
                ([f"another column order {list(other)}"] if order else [])
            raise PlanError(f"concat(how={how!r}): frame {i} does not match frame 0 (columns {list(first)}): "
                            f"{', '.join(parts)}. Select and cast the columns to match, or use how='diagonal' "
                            "(missing columns become null) or how='vertical_relaxed' (dtypes widened).")


def check_pairwise(a: str, b: str) -> None:
    """A pairwise judge of a column against itself is an error: every verdict would be a tie."""
    if a == b:
        raise PlanError(f"judge_pairwise(a={a!r}, b={b!r}) compares a column with itself: every verdict would be "
                        "a tie at the price of the calls. Pass two different answer columns.")


def check_source_rows(rows: int, label: str) -> None:
    """Warn (:class:`EmptyInputWarning`) when an in-memory source has no rows."""
    if rows == 0:
        warnings.warn(f"{label}(): the data has no rows, so every operator on this frame yields an empty frame "
                      "and calls no model. Check the data you pass.", EmptyInputWarning, stacklevel=4)


def check_split(fractions: Mapping[str, Any], rows: int | None) -> tuple[tuple[str, float], ...]:
    """Checked ``split()`` fractions: numbers > 0 summing to 1.

    A part of fraction 0 is an error (empty by construction); a part that rounds to
    no rows of an in-memory source of ``rows`` rows is a warning.
    """
    out: list[tuple[str, float]] = []
    for name, frac in fractions.items():
        column_name("split", "part name", name)
        out.append((name, number("split", f"fractions[{name!r}]", frac, low=0.0, high=1.0, low_open=True,
                                 example="a fraction in (0, 1], e.g. 0.9 and 0.1")))
    if rows is not None and abs(sum(f for _, f in out) - 1.0) <= 1e-9:  # else the plan node says what is wrong
        empty = [n for n, f in out if round(f * rows) == 0]
        if empty:
            warnings.warn(f"split(): part(s) {empty} get no rows out of {rows}; use larger fractions or more data.",
                          EmptyInputWarning, stacklevel=3)
    return tuple(out)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_folder(model: str, gguf_file: str | None) -> None:
    """A local model folder must hold a config and a tokenizer (or the named GGUF file).

    Raises
    ------
    ModelNotFoundError
        The folder lacks them; raised when the spec is built, before loading.
    """
    root = Path(model)
    if not root.is_dir():
        return
    if gguf_file is not None:
        if not (root / gguf_file).is_file():
            found = sorted(p.name for p in root.glob("*.gguf")) or "none"
            raise ModelNotFoundError(f"The model folder {os.fspath(root)} has no GGUF file {gguf_file!r} "
                                     f"(GGUF files there: {found}). Pass gguf_file= one of them.")
        return
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(f"tokenizer file (one of {', '.join(_TOKENIZER_FILES)})")
    if missing:
        raise ModelNotFoundError(f"The model folder {os.fspath(root)} has no {' and no '.join(missing)}. Save both "
                                 "with model.save_pretrained(folder) and tokenizer.save_pretrained(folder), or pass "
                                 "an alias or a Hub id.")
