"""Datasets on disk and on the Hugging Face Hub: parquet shards plus a data card.

Layout (the Hub's convention, loadable with ``datasets.load_dataset``)::

    <dataset>/
      README.md                                  data card with dataset-card YAML metadata
      lazyllm_card.json                          the same card as JSON
      data/<split>-00000-of-0000N.parquet        shards of at most max_shard_rows rows

:func:`save_dataset` writes it locally; :func:`publish` writes it in a temporary
folder and uploads it with huggingface_hub in one commit; :func:`sink_hub` streams
it: one commit per partition as it finishes (``data/<split>-00000.parquet``, ...),
a progress section in the card, and a resume that skips shards already on the Hub
(state in ``lazyllm_stream_<split>.json``); :func:`publish_model`
uploads a trained model's folder with its model card. Tokens come from the
argument, ``HF_TOKEN`` or ``huggingface-cli login``; they are never logged or
written to a card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from lazyllm.core.errors import HubError, ParameterError, PathNotFoundError

from lazyllm.planner import executor as _exec
from lazyllm.planner.nodes import DataFrameSource, FileSource
from lazyllm.planner.optimizer import optimize as _optimize
from lazyllm.planner.workspace import resolve_workspace

from .cards import CARD_JSON, CARD_README, DataCard, ModelCard, data_card, is_frame

if TYPE_CHECKING:
    from lazyllm.planner.workspace import Workspace

    from .frame import Frame

__all__ = ["save_dataset", "publish", "sink_hub", "publish_model", "shard_names", "token_statistics", "HubError"]

log = logging.getLogger("lazyllm")

# ``-of-NNNNN`` shards come from publish()/save_dataset(); shards without it from sink_hub()
_SHARD = re.compile(r"data/(?P<split>\w+)-(?P<index>\d{5})(?:-of-(?P<count>\d{5}))?\.parquet")


def shard_names(split: str, rows: int, max_shard_rows: int) -> list[str]:
    """Paths (relative to the dataset root) of the shards of ``rows`` rows.

    >>> shard_names("train", 250, 100)
    ['data/train-00000-of-00003.parquet', 'data/train-00001-of-00003.parquet', 'data/train-00002-of-00003.parquet']
    >>> shard_names("test", 0, 100)
    ['data/test-00000-of-00001.parquet']
    """
    count = max(1, -(-rows // max_shard_rows))
    return [f"data/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count)]


def _check(split: str, max_shard_rows: Any, name: str = "max_shard_rows") -> None:
    if not isinstance(split, str) or not re.fullmatch(r"\w+", split):
        raise ParameterError(f"split must be a name of letters, digits and underscores (e.g. 'train'), got {split!r}.")
    if not isinstance(max_shard_rows, int) or isinstance(max_shard_rows, bool) or max_shard_rows < 1:
        raise ParameterError(f"{name} must be a positive int (rows per parquet file), got {max_shard_rows!r}.")


def _collect(frame: "Frame", data: pl.DataFrame | None, workspace: Any, progress: bool | None) -> pl.DataFrame:
    if not is_frame(frame):
        raise ParameterError(f"Expected a lazyllm Frame, got {type(frame).__name__}; wrap data with lazyllm.from_polars().")
    if data is None:
        return frame.collect(workspace=workspace, progress=progress)
    if not isinstance(data, pl.DataFrame):
        raise ParameterError(f"data= must be the polars DataFrame collected from the frame, got {type(data).__name__}.")
    if data.columns != frame.columns:
        raise ParameterError(f"data= has columns {data.columns} but the frame has {frame.columns}: pass the DataFrame "
                        "that frame.collect() returned, or leave data= out to collect it here.")
    return data


def _splits_on_disk(directory: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted((directory / "data").glob("*.parquet")):
        rel = path.relative_to(directory).as_posix()
        m = _SHARD.fullmatch(rel)
        if m:
            out.setdefault(m["split"], []).append(rel)
    return out


def _write_layout(df: pl.DataFrame, directory: Path, card: DataCard, *, split: str, max_shard_rows: int,
                  other_splits: Mapping[str, list[str]]) -> list[str]:
    """Write the shards of ``split`` one by one, then the card; return the shard paths."""
    names = shard_names(split, df.height, max_shard_rows)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for old in (directory / "data").glob(f"{split}-*-of-*.parquet"):  # a previous save of this split
        old.unlink()
    for i, name in enumerate(names):
        df.slice(i * max_shard_rows, max_shard_rows).write_parquet(directory / name)
    splits: dict[str, dict[str, Any]] = {s: {"rows": None, "files": files}
                                         for s, files in other_splits.items() if s != split}
    splits[split] = {"rows": df.height, "files": names}
    card.with_dataset(splits).save(directory)
    return names


def save_dataset(
    frame: "Frame",
    directory: str | os.PathLike[str],
    *,
    split: str = "train",
    max_shard_rows: int = 100_000,
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    data: pl.DataFrame | None = None,
    progress: bool | None = None,
    **card_kwargs: Any,
) -> Path:
    """Collect ``frame`` and write it as a Hub-style dataset folder with its data card.

    Parameters
    ----------
    frame : Frame
        The data to save.
    directory : str or path
        Dataset root (created). Shards of other splits already there are kept and
        listed in the card's ``configs``; earlier shards of ``split`` are replaced.
    split : str
        Split name (``train``, ``validation``, ``test``...).
    max_shard_rows : int
        Rows per parquet shard; shards are written one after the other.
    workspace : str, path or Workspace, optional
        Cache and run logs (default ``LAZYLLM_HOME`` or ``./.lazyllm``).
    data : polars.DataFrame, optional
        The frame's already collected result (skips the collect).
    progress : bool, optional
        Progress bars while collecting.
    **card_kwargs
        ``title``, ``license``, ``description``, ``tags``... for :func:`lazyllm.cards.data_card`.

    Returns
    -------
    Path
        ``directory``. ``datasets.load_dataset("parquet", data_dir=directory)`` loads it.

    Raises
    ------
    PlanError
        Bad split name or shard size, or ``data`` whose columns are not the frame's.

    Notes
    -----
    Cost: one collect (cache hits for whatever was computed before); none with ``data``.
    """
    _check(split, max_shard_rows)
    df = _collect(frame, data, workspace, progress)
    out = Path(directory)
    card = data_card(frame, workspace=workspace, **card_kwargs)
    _write_layout(df, out, card, split=split, max_shard_rows=max_shard_rows, other_splits=_splits_on_disk(out))
    return out


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()  # HF_TOKEN, then the token saved by `hf auth login`
    if not token:
        raise HubError("No Hugging Face token: pass token=..., set HF_TOKEN, or run `hf auth login`. "
                       "It needs write access to the target namespace.")
    return token


def _hub_error(what: str, repo_id: str, exc: Exception) -> HubError:
    response = getattr(exc, "response", None)
    status = response.status_code if response is not None else "no response"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HubError(f"{what} for {repo_id!r} failed (HTTP {status}): {first}. Check that the token has write "
                    "access to this namespace and that the repo id is right.")


def _hub_call(what: str, repo_id: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn(*args, **kwargs)
    except HfHubHTTPError as exc:
        raise _hub_error(what, repo_id, exc) from None


def _remote_files(api: Any, repo_id: str, repo_type: str) -> list[str]:
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RevisionNotFoundError

    try:
        return api.list_repo_files(repo_id, repo_type=repo_type)
    except (RemoteEntryNotFoundError, RevisionNotFoundError):
        return []  # a repo without a commit has no tree yet
    except HfHubHTTPError as exc:
        raise _hub_error("Listing the repo's files", repo_id, exc) from None


def _commit(api: Any, repo_id: str, repo_type: str, root: Path, files: Iterable[str], deletions: Iterable[str],
            message: str) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops: list[Any] = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files]
    ops += [CommitOperationDelete(path_in_repo=f) for f in deletions]
    info = _hub_call("The commit", repo_id, api.create_commit, repo_id, operations=ops, commit_message=message,
                     repo_type=repo_type)
    return str(info.commit_url)


def publish(
    frame: "Frame",
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    split: str = "train",
    endpoint: str | None = None,
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    max_shard_rows: int = 100_000,
    commit_message: str | None = None,
    data: pl.DataFrame | None = None,
    progress: bool | None = None,
    **card_kwargs: Any,
) -> str:
    """Collect ``frame`` and publish it as a Hugging Face dataset repo, in one commit.

    The repo gets ``data/<split>-*.parquet`` shards, ``README.md`` (the data card
    with dataset-card YAML, whose ``configs`` list every split in the repo) and
    ``lazyllm_card.json``. Earlier shards of the same split are deleted in the same
    commit; other splits stay.

    Parameters
    ----------
    frame : Frame
        The data to publish.
    repo_id : str
        ``"user/name"`` or ``"org/name"``; created as a dataset repo when missing.
    private : bool
        Visibility of a repo created here (an existing repo keeps its visibility).
    token : str, optional
        A Hub token with write access (default ``HF_TOKEN`` or the saved login).
        Sent only to the Hub; never logged or written to the card.
    split, max_shard_rows, workspace, data, progress, **card_kwargs
        As in :func:`save_dataset`.
    endpoint : str, optional
        Hub URL (default ``HF_ENDPOINT`` or https://huggingface.co).
    commit_message : str, optional
        Default names the split, row count and fingerprint.

    Returns
    -------
    str
        URL of the commit.

    Raises
    ------
    HubError
        No token, or the Hub refused a call (the message gives the HTTP status).
    PlanError
        As in :func:`save_dataset` (raised before anything is uploaded).

    Notes
    -----
    Cost: one collect (cache hits for whatever was computed before), then five
    Hub API calls (create repo, list files, check the README metadata, pre-upload,
    commit) plus the upload of the shards.
    """
    from huggingface_hub import HfApi

    _check(split, max_shard_rows)
    token = _token(token)
    df = _collect(frame, data, workspace, progress)
    card = data_card(frame, workspace=workspace, **card_kwargs)
    api = HfApi(endpoint=endpoint, token=token)
    _hub_call("Creating the dataset repo", repo_id, api.create_repo, repo_id, repo_type="dataset", private=private,
              exist_ok=True)
    remote = _remote_files(api, repo_id, "dataset")
    other: dict[str, list[str]] = {}
    for path in sorted(remote):
        m = _SHARD.fullmatch(path)
        if m:
            other.setdefault(m["split"], []).append(path)
    with tempfile.TemporaryDirectory(prefix="lazyllm-publish-") as tmp:
        root = Path(tmp)
        shards = _write_layout(df, root, card, split=split, max_shard_rows=max_shard_rows, other_splits=other)
        stale = [p for p in other.get(split, []) if p not in shards]
        message = commit_message or (f"lazyllm: {split} split, {df.height:,} rows "
                                     f"(fingerprint {frame.fingerprint[:12]})")
        url = _commit(api, repo_id, "dataset", root, [*shards, CARD_README, CARD_JSON], stale, message)
    log.info("published %s rows of %s to %s", df.height, frame.fingerprint[:12], url)
    return url


def publish_model(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    card: ModelCard | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a trained model's folder (adapter or full weights) and its card, in one commit.

    Parameters
    ----------
    directory : str or path
        The saved model (``save_pretrained`` output). Hidden files are skipped.
    repo_id : str
        Model repo, created when missing.
    card : ModelCard, optional
        Written as ``README.md`` and ``lazyllm_card.json`` in the commit (the
        folder itself is not modified). Without it, the folder's own files are sent.
    private, token, endpoint, commit_message
        As in :func:`publish`.

    Returns
    -------
    str
        URL of the commit.

    Raises
    ------
    HubError
        No token, or the Hub refused a call.
    FileNotFoundError
        ``directory`` is not a folder.

    Notes
    -----
    Cost: four Hub API calls (create repo, check the README metadata, pre-upload,
    commit) plus the upload.
    """
    from huggingface_hub import HfApi

    src = Path(directory)
    if not src.is_dir():
        raise PathNotFoundError(f"{src} is not a folder: pass the folder a trainer saved the model to.")
    token = _token(token)
    api = HfApi(endpoint=endpoint, token=token)
    _hub_call("Creating the model repo", repo_id, api.create_repo, repo_id, repo_type="model", private=private,
              exist_ok=True)
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts))
    with tempfile.TemporaryDirectory(prefix="lazyllm-publish-") as tmp:
        root = Path(tmp)
        if card is not None:
            card.save(root)
            files = [f for f in files if f not in (CARD_README, CARD_JSON)]
        from huggingface_hub import CommitOperationAdd

        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(src / f)) for f in files]
        if card is not None:
            ops += [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in (CARD_README, CARD_JSON)]
        info = _hub_call("The commit", repo_id, api.create_commit, repo_id, operations=ops,
                         commit_message=commit_message or "lazyllm: trained model and model card", repo_type="model")
    return str(info.commit_url)


# ------------------------------------------------------------------------------------
# Streaming to the Hub
# ------------------------------------------------------------------------------------

STREAM_STATE = "lazyllm_stream_{split}.json"
_STREAM_FORMAT = 1


def _merge(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[int, int]:
    out = {int(k): int(v) for k, v in a.items()}
    for k, v in b.items():
        out[int(k)] = out.get(int(k), 0) + int(v)
    return out


def _quantile(histogram: Mapping[int, int], q: float) -> int | None:
    """Nearest-rank quantile of a tokens -> count histogram."""
    n = sum(histogram.values())
    if n == 0:
        return None
    rank, seen = max(1, math.ceil(q * n - 1e-9)), 0
    for tokens in sorted(histogram):
        seen += histogram[tokens]
        if seen >= rank:
            return tokens
    return max(histogram)


def token_statistics(columns: Mapping[str, Mapping[str, Mapping[Any, int]]]) -> dict[str, dict[str, Any]]:
    """Count, mean, p50 and p95 of the input and output tokens of each LLM column.

    Parameters
    ----------
    columns : mapping
        column -> ``{"input": histogram, "output": histogram}``; a histogram maps a
        token count (per request) to the number of requests with that count.

    Returns
    -------
    dict
        column -> ``{"count", "input_mean", "input_p50", "input_p95", "output_mean",
        "output_p50", "output_p95"}`` (nearest-rank quantiles, tokens per request).

    >>> token_statistics({"answer": {"input": {10: 3, 20: 1}, "output": {5: 2, 7: 2}}})["answer"]
    {'count': 4, 'input_mean': 12.5, 'input_p50': 10, 'input_p95': 20, 'output_mean': 6.0, 'output_p50': 5, 'output_p95': 7}
    """
    out: dict[str, dict[str, Any]] = {}
    for column, hists in columns.items():
        row: dict[str, Any] = {"count": sum(int(v) for v in hists["output"].values())}
        for side in ("input", "output"):
            hist = {int(k): int(v) for k, v in hists[side].items()}
            n = sum(hist.values())
            row[f"{side}_mean"] = round(sum(k * v for k, v in hist.items()) / n, 2) if n else None
            row[f"{side}_p50"] = _quantile(hist, 0.5)
            row[f"{side}_p95"] = _quantile(hist, 0.95)
        out[column] = row
    return out


def _total_input_rows(source: Any) -> int | None:
    """Input rows of a partitioned run's source when cheap to know (for the ETA)."""
    if isinstance(source, DataFrameSource):
        return source.data.height
    if isinstance(source, FileSource) and source.format == "parquet":
        return sum(pl.scan_parquet(p, **dict(source.options)).select(pl.len()).collect().item() for p in source.paths)
    return None


def _read_state(api: Any, repo_id: str, path: str) -> dict[str, Any] | None:
    from huggingface_hub.errors import HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="lazyllm-stream-") as tmp:
        try:
            local = api.hf_hub_download(repo_id, path, repo_type="dataset", local_dir=tmp)
        except HfHubHTTPError as exc:
            raise _hub_error("Reading the streaming state", repo_id, exc) from None
        try:
            state = json.loads(Path(local).read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s on %s is not JSON: starting the split over", path, repo_id)
            return None
    return state if isinstance(state, dict) and state.get("format") == _STREAM_FORMAT else None


def _readme(card: DataCard, sections: list[str]) -> str:
    """The card's Markdown with ``sections`` placed before its summary."""
    text = card.to_markdown()
    if not sections:
        return text
    block = "\n\n".join(sections) + "\n\n"
    at = text.find("## Summary")
    return text[:at] + block + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + block


def _progress_md(p: Mapping[str, Any], *, final: bool) -> str:
    def fmt(v: Any, unit: str = "") -> str:
        return "unknown" if v is None else (f"{v:,}{unit}" if isinstance(v, int) else f"{v:,.1f}{unit}")

    title = "## Streaming run" if final else "## Generation progress"
    rows = [
        ("status", "finished" if final else f"running (updated {p['updated_at']})"),
        ("input rows done", f"{p['rows_in_done']:,} of {fmt(p['rows_in_total'])}"),
        ("rows written", f"{p['rows']:,} in {p['shards']} shard(s)"),
        ("output tokens", f"{p['output_tokens']:,}"),
        ("output tokens/s (this run)", fmt(p["tokens_per_second"])),
    ]
    if not final:
        rows.append(("ETA", fmt(p["eta_seconds"], " s")))
    rows.append(("runs (a resumed run counts again)", p["runs"]))
    return title + "\n\n" + _table_md(("item", "value"), rows)


def _tokens_md(stats: Mapping[str, Mapping[str, Any]]) -> str:
    header = ("column", "requests", "input mean", "input p50", "input p95", "output mean", "output p50", "output p95")
    rows = [(c, s["count"], s["input_mean"], s["input_p50"], s["input_p95"], s["output_mean"], s["output_p50"],
             s["output_p95"]) for c, s in stats.items()]
    return ("## Token statistics\n\nTokens per request of each LLM column, over every shard "
            "(requests served from the cache included).\n\n" + _table_md(header, rows))


def _table_md(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class _Stream:
    """The state of one sink_hub run: what is on the Hub, what this run added, the uploads."""

    def __init__(self, api: Any, repo_id: str, split: str, rows_per_shard: int, fingerprint: str,
                 prior: dict[str, Any] | None, remote: list[str], total_in: int | None, card: DataCard,
                 card_interval: float, other_splits: Mapping[str, list[str]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.api, self.repo_id, self.split = api, repo_id, split
        self.state_path = STREAM_STATE.format(split=split)
        self.total_in, self.card, self.card_interval = total_in, card, card_interval
        self.other_splits = other_splits
        # the state of an earlier run counts only for the same frame and partitioning
        usable = prior is not None and (prior.get("fingerprint"), prior.get("rows_per_shard"), prior.get("split")) \
            == (fingerprint, rows_per_shard, split)
        listed = {int(k): v for k, v in prior["shards"].items()} if usable and prior else {}
        shards = {i: v for i, v in listed.items() if v["path"] in remote}  # listed and really there
        columns = prior.get("columns", {}) if usable and prior and shards == listed else {}
        if shards and not columns:
            log.warning("a shard listed in the streaming state of %s is missing: it is made again, and the token "
                        "statistics count only the shards made from now on", repo_id)
        self.done_before = set(shards)
        self.state: dict[str, Any] = {
            "format": _STREAM_FORMAT, "fingerprint": fingerprint, "split": split, "rows_per_shard": rows_per_shard,
            "runs": (int(prior.get("runs", 0)) if usable and prior else 0) + 1, "finished": False,
            "shards": shards, "columns": columns,
        }
        self.base_columns = columns
        self.run_tokens = (0, 0)  # this run's input and output tokens at its last shard
        self.start = time.perf_counter()
        self.last_card = -float("inf")
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lazyllm-hub")
        self.futures: list[Any] = []
        self.last_url: str | None = None

    # -- numbers ----------------------------------------------------------------------
    def _columns(self, stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        cols = {c: {"input": dict(h["input"]), "output": dict(h["output"])} for c, h in self.base_columns.items()}
        for st in stats.values():
            if not st.input_tokens_histogram and not st.output_tokens_histogram:
                continue
            entry = cols.setdefault(st.column, {"input": {}, "output": {}})
            entry["input"] = _merge(entry["input"], st.input_tokens_histogram)
            entry["output"] = _merge(entry["output"], st.output_tokens_histogram)
        return cols

    def progress(self) -> dict[str, Any]:
        shards = self.state["shards"].values()
        now = time.perf_counter() - self.start
        new = [s for i, s in self.state["shards"].items() if i not in self.done_before]
        rows_in_done = sum(s["rows_in"] for s in shards)
        new_in, new_out_tokens = sum(s["rows_in"] for s in new), sum(s["output_tokens"] for s in new)
        eta = None
        if self.total_in is not None and new_in:
            eta = round(max(self.total_in - rows_in_done, 0) * now / new_in, 1)
        return {
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rows_in_done": rows_in_done, "rows_in_total": self.total_in,
            "rows": sum(s["rows"] for s in shards), "shards": len(self.state["shards"]),
            "output_tokens": sum(s["output_tokens"] for s in shards),
            "tokens_per_second": round(new_out_tokens / now, 1) if now > 0 else None,
            "eta_seconds": eta, "runs": self.state["runs"],
        }

    def files(self) -> list[str]:
        return [self.state["shards"][i]["path"] for i in sorted(self.state["shards"])]

    def card_files(self, card: DataCard, sections: list[str], extra: dict[str, Any]) -> dict[str, bytes]:
        splits: dict[str, dict[str, Any]] = {s: {"rows": None, "files": f} for s, f in self.other_splits.items()
                                             if s != self.split}
        splits[self.split] = {"rows": sum(s["rows"] for s in self.state["shards"].values()), "files": self.files()}
        full = card.with_dataset(splits)
        full.data["streaming"] = extra
        return {CARD_README: _readme(full, sections).encode(), CARD_JSON: (full.to_json() + "\n").encode()}

    # -- uploads ----------------------------------------------------------------------
    def check(self) -> None:
        """Raise the error of a finished upload, if any (stops the run early)."""
        for f in self.futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def shard_done(self, index: int, rows_in: int, df: pl.DataFrame, path: Path, stats: Mapping[str, Any]) -> None:
        self.check()
        shard = f"data/{self.split}-{index:05d}.parquet"
        tokens_in = sum(st.input_tokens for st in stats.values())  # this run's, cumulative
        tokens_out = sum(st.output_tokens for st in stats.values())
        self.state["shards"][index] = {"path": shard, "rows_in": rows_in, "rows": df.height,
                                       "input_tokens": tokens_in - self.run_tokens[0],
                                       "output_tokens": tokens_out - self.run_tokens[1],
                                       "seconds": round(time.perf_counter() - self.start, 3)}
        self.run_tokens = (tokens_in, tokens_out)
        self.state["columns"] = self._columns(stats)
        files: dict[str, bytes] = {self.state_path: json.dumps(self.state, indent=1).encode()}
        now = time.perf_counter()
        if now - self.last_card >= self.card_interval:
            self.last_card = now
            p = self.progress()
            files.update(self.card_files(self.card, [_progress_md(p, final=False)], {"progress": p}))
        message = f"lazyllm: {self.split} shard {index:05d} ({df.height:,} rows)"
        self.futures.append(self.pool.submit(self._upload, path, shard, files, [], message))

    def _upload(self, local: Path | None, shard: str | None, files: Mapping[str, bytes], deletions: list[str],
                message: str) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops: list[Any] = []
        if local is not None:
            ops.append(CommitOperationAdd(path_in_repo=shard, path_or_fileobj=str(local)))
        ops += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
        ops += [CommitOperationDelete(path_in_repo=f) for f in deletions]
        info = _hub_call("The commit", self.repo_id, self.api.create_commit, self.repo_id, operations=ops,
                         commit_message=message, repo_type="dataset")
        if local is not None:
            local.unlink(missing_ok=True)
        self.last_url = str(info.commit_url)
        return self.last_url

    def drain(self) -> None:
        """Wait for every upload; raise the first error."""
        try:
            for f in self.futures:
                f.result()
        finally:
            self.pool.shutdown(wait=True)


def sink_hub(
    frame: "Frame",
    repo_id: str,
    *,
    rows_per_shard: int = 100_000,
    split: str = "train",
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    card_interval: float = 60.0,
    progress: bool | None = None,
    optimize: bool = True,
    executor: Any = None,
    **card_kwargs: Any,
) -> str:
    """Run the plan one input partition at a time and stream each shard to a Hugging Face
    dataset repo in its own commit, with a live progress section in the data card.

    The partitioned execution is that of :meth:`lazyllm.Frame.sink_parquet`. Partition
    ``i`` becomes ``data/<split>-<i:05d>.parquet``; its commit also carries
    ``lazyllm_stream_<split>.json`` (the run's state: fingerprint, shard size, the
    shards done with their rows and tokens, token histograms per LLM column) and, at
    most every ``card_interval`` seconds, the card (``README.md``,
    ``lazyllm_card.json``) with a progress section: input rows done, rows written,
    output tokens, output tokens/s and ETA. Uploads run in a background thread while
    the next partition is generated. The last commit writes the final card: token
    statistics per LLM column (requests, mean, p50, p95 of input and output tokens)
    and the run's stats, and deletes older shards of the split (from :func:`publish` or
    a run of another frame).

    A crashed or killed run resumes: rerun the same call; the partitions whose shards
    the state lists and the repo holds (same frame fingerprint and ``rows_per_shard``)
    are neither run nor uploaded again, and the partitions generated but not uploaded
    are served from the LMDB cache.

    Parameters
    ----------
    frame : Frame
        A row-by-row plan (as for ``sink_parquet``).
    repo_id : str
        ``"user/name"`` or ``"org/name"``; created as a dataset repo when missing.
    rows_per_shard : int
        Input rows per partition (a shard has at most that many rows). Keep it for a
        resume: another value starts the split over.
    split : str
        Split name (``train``, ``test``...).
    private, token, endpoint
        As in :func:`publish`.
    workspace : str, path or Workspace, optional
        Cache, run logs and card statistics.
    card_interval : float
        Seconds between two updates of the card's progress section (0: every shard).
    progress, optimize, executor
        As for :meth:`lazyllm.Frame.collect`.
    **card_kwargs
        ``title``, ``license``, ``description``, ``tags``... for :func:`lazyllm.cards.data_card`.

    Returns
    -------
    str
        URL of the last commit (the final card).

    Raises
    ------
    PlanError
        Bad split name, ``rows_per_shard`` or ``card_interval``, or a plan that needs
        every row at once; raised before any Hub call or model load.
    HubError
        No token, or the Hub refused a call (shards committed before stay; rerun to resume).

    Notes
    -----
    Cost: the LLM calls of the partitions not on the Hub yet (cache hits for work done
    before); Hub API calls: create repo, list files, read the state (on a rerun), one
    commit per partition and one final commit. Streaming as in DataForge (a seed of this
    project): shards and a progress card on the Hub while generating.
    """
    from huggingface_hub import HfApi

    if not is_frame(frame):
        raise ParameterError(f"Expected a lazyllm Frame, got {type(frame).__name__}; wrap data with lazyllm.from_polars().")
    _check(split, rows_per_shard, "rows_per_shard")
    if isinstance(card_interval, bool) or not isinstance(card_interval, (int, float)) or card_interval < 0:
        raise ParameterError(f"card_interval must be a number of seconds >= 0, got {card_interval!r}.")
    plan = _optimize(frame.plan).plan if optimize else frame.plan
    _chain, source = _exec.partition_chain(plan)  # PlanError for a plan that needs every row at once
    token = _token(token)
    ws = resolve_workspace(workspace)
    api = HfApi(endpoint=endpoint, token=token)
    _hub_call("Creating the dataset repo", repo_id, api.create_repo, repo_id, repo_type="dataset", private=private,
              exist_ok=True)
    remote = _remote_files(api, repo_id, "dataset")
    state_path = STREAM_STATE.format(split=split)
    prior = _read_state(api, repo_id, state_path) if state_path in remote else None
    other: dict[str, list[str]] = {}
    for path in sorted(remote):
        m = _SHARD.fullmatch(path)
        if m and m["split"] != split:
            other.setdefault(m["split"], []).append(path)
    stream = _Stream(api, repo_id, split, rows_per_shard, frame.fingerprint, prior, remote, _total_input_rows(source),
                     data_card(frame, workspace=ws, **card_kwargs), float(card_interval), other)
    if stream.done_before:
        log.info("resuming %s: %d shard(s) of %s already on the Hub", repo_id, len(stream.done_before), split)
    result = None
    with tempfile.TemporaryDirectory(prefix="lazyllm-sink-hub-") as tmp:
        try:
            _, result = _exec.sink_partitioned(frame.plan, tmp, rows_per_shard=rows_per_shard, workspace=ws,
                                               progress=progress, optimize=optimize, executor=executor,
                                               skip=stream.done_before, on_shard=stream.shard_done)
        finally:
            stream.drain()  # the shards generated before a crash still reach the Hub
    stream.state["finished"] = True
    final = stream.progress()
    tokens = token_statistics(stream.state["columns"])
    run = {"seconds": round(result.seconds, 3), "nodes": [
        {"column": s.column, "kind": s.kind, "model": s.model, "rows_in": s.rows_in, "calls": s.calls,
         "cache_hits": s.cache_hits, "failures": s.failures, "input_tokens": s.input_tokens,
         "output_tokens": s.output_tokens, "seconds": round(s.seconds, 3)} for s in result.stats.values()]}
    card = data_card(frame, workspace=ws, **card_kwargs)  # now with this run's log
    card.data["rows"] = final["rows"]
    files = {state_path: json.dumps(stream.state, indent=1).encode()}
    files.update(stream.card_files(card, [_progress_md(final, final=True), _tokens_md(tokens)],
                                   {"progress": final, "token_statistics": tokens, "run": run}))
    keep = set(stream.files())
    stale = [p for p in remote if (m := _SHARD.fullmatch(p)) and m["split"] == split and p not in keep]
    url = stream._upload(None, None, files, stale, f"lazyllm: {split} split done, {final['rows']:,} rows in "
                         f"{final['shards']} shards (fingerprint {frame.fingerprint[:12]})")
    log.info("streamed %s rows of %s to %s", final["rows"], frame.fingerprint[:12], url)
    return url
