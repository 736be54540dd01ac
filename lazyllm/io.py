"""Sources: build a Frame from files or in-memory data. Nothing is read eagerly
except what is needed for the schema (and, for fingerprints, the file content).
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from lazyllm.backends.errors import MissingDependencyError, PlanError
from lazyllm.planner import nodes as N

from .frame import Frame
from .validation import check_source_rows

__all__ = [
    "read_parquet", "read_csv", "read_ndjson", "from_polars", "from_pandas", "from_arrow", "from_dicts", "from_hf",
]


def _expand(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(_glob.glob(text, recursive=True))
            if not matches:
                raise PlanError(f"The glob {text!r} matches no file. Check the path.")
            out.extend(matches)
        elif os.path.isdir(text):
            raise PlanError(f"{text!r} is a folder; pass a file or a glob such as '{text}/*.parquet'.")
        else:
            out.append(text)
    return tuple(out)


def _options(kwargs: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


def read_parquet(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any) -> Frame:
    """Parquet file(s) (a path, a glob or a list); ``kwargs`` go to ``polars.scan_parquet``."""
    return Frame(N.FileSource(paths=_expand(source), format="parquet", options=_options(kwargs)))


def read_csv(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any) -> Frame:
    """CSV file(s); ``kwargs`` go to ``polars.scan_csv``."""
    return Frame(N.FileSource(paths=_expand(source), format="csv", options=_options(kwargs)))


def read_ndjson(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any) -> Frame:
    """JSON-lines file(s); ``kwargs`` go to ``polars.scan_ndjson``."""
    return Frame(N.FileSource(paths=_expand(source), format="ndjson", options=_options(kwargs)))


def from_polars(df: pl.DataFrame | pl.LazyFrame, *, label: str = "from_polars") -> Frame:
    """A polars DataFrame (a LazyFrame is collected now: sources are fingerprinted by content)."""
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if not isinstance(df, pl.DataFrame):
        raise PlanError(f"from_polars() takes a polars DataFrame, got {type(df).__name__}.")
    check_source_rows(df.height, label)
    return Frame(N.DataFrameSource(data=df, label=label))


def from_pandas(df: Any) -> Frame:
    """A pandas DataFrame (converted through Arrow)."""
    return from_polars(pl.from_pandas(df), label="from_pandas")


def from_arrow(table: Any) -> Frame:
    """A pyarrow Table or RecordBatch."""
    out = pl.from_arrow(table)
    if not isinstance(out, pl.DataFrame):
        raise PlanError("from_arrow() takes a pyarrow Table or RecordBatch, not an Array.")
    return from_polars(out, label="from_arrow")


def from_dicts(rows: Iterable[Mapping[str, Any]], *, schema: Any = None) -> Frame:
    """A list of dicts, one per row."""
    return from_polars(pl.from_dicts(list(rows), schema=schema), label="from_dicts")


def from_hf(
    dataset: Any,
    *,
    split: str | None = None,
    revision: str | None = None,
    name: str | None = None,
    **load_kwargs: Any,
) -> Frame:
    """A Hugging Face ``datasets.Dataset``, or a dataset loaded with ``datasets.load_dataset``.

    Parameters
    ----------
    dataset : datasets.Dataset, datasets.DatasetDict or str
        A loaded dataset, or a Hub id / local folder passed to ``load_dataset``
        (downloads only where the machine has internet; a local folder of parquet,
        csv or json files works offline).
    split : str, optional
        Which split (required when the dataset has several).
    revision, name : str, optional
        Passed to ``load_dataset``.

    Raises
    ------
    PlanError
        Several splits and none chosen (the message lists them).
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a base dependency
        raise MissingDependencyError("datasets", "base", "from_hf()") from exc

    label = "from_hf"
    if isinstance(dataset, str):
        label = f"from_hf {dataset}"
        dataset = datasets.load_dataset(dataset, name=name, split=split, revision=revision, **load_kwargs)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = list(dataset.keys())
        if split is None:
            if len(splits) != 1:
                raise PlanError(f"The dataset has splits {splits}; choose one with from_hf(..., split=...).")
            split = splits[0]
        if split not in dataset:
            raise PlanError(f"Split {split!r} not found; the dataset has {splits}.")
        dataset = dataset[split]
    if isinstance(dataset, datasets.IterableDataset):
        raise PlanError("from_hf() needs a map-style Dataset; load without streaming=True.")
    if not isinstance(dataset, datasets.Dataset):
        raise PlanError(f"from_hf() takes a datasets.Dataset or a dataset id, got {type(dataset).__name__}.")
    table = dataset.with_format("arrow")[:]  # honours indices mappings (select/shuffle)
    return from_polars(pl.from_arrow(table), label=label)  # type: ignore[arg-type]
