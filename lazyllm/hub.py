"""Datasets on disk and on the Hugging Face Hub: parquet shards plus a data card.

Layout (the Hub's convention, loadable with ``datasets.load_dataset``)::

    <dataset>/
      README.md                                  data card with dataset-card YAML metadata
      lazyllm_card.json                          the same card as JSON
      data/<split>-00000-of-0000N.parquet        shards of at most max_shard_rows rows

:func:`save_dataset` writes it locally; :func:`publish` writes it in a temporary
folder and uploads it with huggingface_hub in one commit; :func:`publish_model`
uploads a trained model's folder with its model card. Tokens come from the
argument, ``HF_TOKEN`` or ``huggingface-cli login``; they are never logged or
written to a card.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from lazyllm.backends.errors import HubError, PathNotFoundError, PlanError

from .cards import CARD_JSON, CARD_README, DataCard, ModelCard, data_card

if TYPE_CHECKING:
    from lazyllm.planner.workspace import Workspace

    from .frame import Frame

__all__ = ["save_dataset", "publish", "publish_model", "shard_names", "HubError"]

log = logging.getLogger("lazyllm")

_SHARD = re.compile(r"data/(?P<split>\w+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet")


def shard_names(split: str, rows: int, max_shard_rows: int) -> list[str]:
    """Paths (relative to the dataset root) of the shards of ``rows`` rows.

    >>> shard_names("train", 250, 100)
    ['data/train-00000-of-00003.parquet', 'data/train-00001-of-00003.parquet', 'data/train-00002-of-00003.parquet']
    >>> shard_names("test", 0, 100)
    ['data/test-00000-of-00001.parquet']
    """
    count = max(1, -(-rows // max_shard_rows))
    return [f"data/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count)]


def _check(split: str, max_shard_rows: int) -> None:
    if not isinstance(split, str) or not re.fullmatch(r"\w+", split):
        raise PlanError(f"split must be a name of letters, digits and underscores (e.g. 'train'), got {split!r}.")
    if not isinstance(max_shard_rows, int) or max_shard_rows < 1:
        raise PlanError(f"max_shard_rows must be a positive int (rows per parquet file), got {max_shard_rows!r}.")


def _collect(frame: "Frame", data: pl.DataFrame | None, workspace: Any, progress: bool | None) -> pl.DataFrame:
    from .frame import Frame

    if not isinstance(frame, Frame):
        raise PlanError(f"Expected a lazyllm Frame, got {type(frame).__name__}; wrap data with lazyllm.from_polars().")
    if data is None:
        return frame.collect(workspace=workspace, progress=progress)
    if not isinstance(data, pl.DataFrame):
        raise PlanError(f"data= must be the polars DataFrame collected from the frame, got {type(data).__name__}.")
    if data.columns != frame.columns:
        raise PlanError(f"data= has columns {data.columns} but the frame has {frame.columns}: pass the DataFrame "
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
