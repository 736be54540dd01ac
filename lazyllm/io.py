"""Sources: build a Frame from files or in-memory data. Nothing is read eagerly
except what is needed for the schema (and, for fingerprints, the file content).
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from lazyllm.core.errors import MissingDependencyError, PlanError
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


_READ_DOC = """Read {what} file(s) lazily into a Frame (read by polars ``{scan}``).

    Parameters
    ----------
    source : str, path-like, or sequence of them
        A file, a glob (``"docs/*.{ext}"``, ``**`` recursive) or a list of both; globs
        are expanded now, sorted.
    **kwargs
        Options of ``polars.{scan}`` (to read some columns, use ``.select()``:
        projection pruning passes it to the scan). {extra}Part of the fingerprint.

    Returns
    -------
    Frame
        One row per record, in file order, files in the order given (globs sorted).

    Raises
    ------
    PlanError
        A glob matches no file, a path is a folder, or a file does not exist.

    Notes
    -----
    Cost: Nothing is read now but the schema (polars reads the {what} lazily at collect
    time). The first fingerprint of the frame (``.explain()``, ``.collect()``) hashes
    every byte of every file (SHA-256, about 1 GB/s), so a copied or moved file keeps
    its cache entries and a changed file gets new ones.

    Examples
    --------
    >>> import polars as pl, tempfile, os, lazyllm
    >>> path = os.path.join(tempfile.mkdtemp(), "docs.{ext}")
    >>> pl.DataFrame({{"doc": ["a", "b"]}}).write_{ext}(path)
    >>> lazyllm.read_{ext}(path).collect(progress=False).height
    2
    """


def read_parquet(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any) -> Frame:
    return Frame(N.FileSource(paths=_expand(source), format="parquet", options=_options(kwargs)))


def read_csv(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any) -> Frame:
    return Frame(N.FileSource(paths=_expand(source), format="csv", options=_options(kwargs)))


def read_ndjson(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any) -> Frame:
    return Frame(N.FileSource(paths=_expand(source), format="ndjson", options=_options(kwargs)))


for _reader, _scan, _what, _extra in (
        (read_parquet, "scan_parquet", "Parquet", ""), (read_csv, "scan_csv", "CSV", "``separator=`` and the like. "),
        (read_ndjson, "scan_ndjson", "JSON-lines", "")):
    _reader.__doc__ = _READ_DOC.format(what=_what, scan=_scan, ext=_reader.__name__[5:], extra=_extra)


def from_polars(df: pl.DataFrame | pl.LazyFrame, *, label: str = "from_polars") -> Frame:
    """A Frame over an in-memory polars DataFrame.

    Parameters
    ----------
    df : polars.DataFrame or polars.LazyFrame
        The rows. A LazyFrame is collected now: sources are fingerprinted by content.
    label : str
        How ``explain()`` and data cards name the source. Not part of the fingerprint.

    Returns
    -------
    Frame
        The same rows and columns, in the same order.

    Raises
    ------
    PlanError
        ``df`` is not a polars DataFrame or LazyFrame.

    Notes
    -----
    Cost: The first fingerprint hashes the frame's content once (its Arrow IPC bytes,
    about 1 GB/s); the data is not copied.

    Examples
    --------
    >>> import polars as pl, lazyllm
    >>> lazyllm.from_polars(pl.DataFrame({"x": [1, 2]})).collect(progress=False)["x"].to_list()
    [1, 2]
    """
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if not isinstance(df, pl.DataFrame):
        raise PlanError(f"from_polars() takes a polars DataFrame, got {type(df).__name__}.")
    check_source_rows(df.height, label)
    return Frame(N.DataFrameSource(data=df, label=label))


def from_pandas(df: Any) -> Frame:
    """A Frame over a pandas DataFrame (converted through Arrow by ``polars.from_pandas``).

    Parameters
    ----------
    df : pandas.DataFrame
        The rows; the index is dropped (``df.reset_index()`` first to keep it).

    Returns
    -------
    Frame

    Notes
    -----
    Cost: One conversion to Arrow now (zero-copy where the dtypes allow); fingerprinted by
    content as :func:`from_polars`.

    Examples
    --------
    >>> import pandas as pd, lazyllm
    >>> lazyllm.from_pandas(pd.DataFrame({"x": [1, 2]})).collect(progress=False).shape
    (2, 1)
    """
    return from_polars(pl.from_pandas(df), label="from_pandas")


def from_arrow(table: Any) -> Frame:
    """A Frame over a pyarrow Table or RecordBatch (zero-copy through ``polars.from_arrow``).

    Parameters
    ----------
    table : pyarrow.Table or pyarrow.RecordBatch

    Returns
    -------
    Frame

    Raises
    ------
    PlanError
        ``table`` is an Array or ChunkedArray (no column names).

    Examples
    --------
    >>> import pyarrow as pa, lazyllm
    >>> lazyllm.from_arrow(pa.table({"x": [1, 2, 3]})).collect(progress=False).height
    3
    """
    out = pl.from_arrow(table)
    if not isinstance(out, pl.DataFrame):
        raise PlanError("from_arrow() takes a pyarrow Table or RecordBatch, not an Array.")
    return from_polars(out, label="from_arrow")


def from_dicts(rows: Iterable[Mapping[str, Any]], *, schema: Any = None) -> Frame:
    """A Frame over rows given as dicts (``polars.from_dicts``).

    Parameters
    ----------
    rows : iterable of mapping
        One mapping per row; keys are column names (a key missing in a row is null).
    schema : optional
        Column names and polars dtypes (``{"score": pl.Int64}``), as for
        ``polars.from_dicts``; inferred from the rows otherwise.

    Returns
    -------
    Frame

    Examples
    --------
    >>> import lazyllm
    >>> lazyllm.from_dicts([{"q": "a?"}, {"q": "b?"}]).collect(progress=False)["q"].to_list()
    ['a?', 'b?']
    """
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
    **load_kwargs
        Other options of ``datasets.load_dataset``.

    Returns
    -------
    Frame
        The split's rows (honouring ``select``/``shuffle`` index mappings).

    Raises
    ------
    PlanError
        Several splits and none chosen, an unknown split (the message lists them), a
        streaming (iterable) dataset, or something that is not a dataset.
    MissingDependencyError
        ``datasets`` is not installed (a base dependency: reinstall).

    Notes
    -----
    Cost: Loads (and, for a Hub id, downloads) the dataset now and copies the split into
    Arrow; fingerprinted by content as :func:`from_polars`.

    Examples
    --------
    >>> import datasets, lazyllm
    >>> lazyllm.from_hf(datasets.Dataset.from_dict({"q": ["a?", "b?"]})).collect(progress=False).height
    2
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a base dependency
        raise MissingDependencyError("datasets", "bash scripts/install.sh", "from_hf()") from exc

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
