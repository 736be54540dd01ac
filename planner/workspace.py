"""The workspace: one folder with everything a run needs to be reproduced.

Layout::

    <workspace>/
      cache/     LMDB prompt cache (data.mdb, lock.mdb)
      models/    converted and trained models
      runs/      one JSON log per collect (plan, fingerprints, stats)
      results/   materialised results (parquet)

The folder is ``./.lazyllm`` unless ``LAZYLLM_HOME`` or an explicit argument says
otherwise. Hand it to a colleague and their rerun makes no model call.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lazyllm.core.errors import WorkspaceError
from lazyllm.core import layout
from lazyllm.core.layout import read_run_logs, run_log_paths
from lazyllm.core.redact import redact, scrub

from .cache import PromptCache

__all__ = ["Workspace", "resolve_workspace", "check_workspace_path"]


_FIX = ("Pass a folder (it is created if missing), for example workspace='.lazyllm', or set LAZYLLM_HOME to "
        "a folder you can write to.")


def check_workspace_path(path: Path) -> None:
    """Raise :class:`WorkspaceError` unless ``path`` is a folder or can be created as one.

    An existing folder is accepted even if read-only (a colleague's workspace can be
    read to reproduce a run); nothing is created here.
    """
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"The workspace {path} is a file, not a folder. {_FIX}")
    if path.is_dir():
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise WorkspaceError(f"The workspace {path} cannot be created: {ancestor} is a file, not a folder. {_FIX}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise WorkspaceError(f"The workspace {path} cannot be created: no permission to write in {ancestor}. {_FIX}")


class Workspace:
    """A workspace folder: everything a run computes, so that it can be reproduced and resumed.

    Holds ``cache/`` (the LMDB prompt cache: one entry per request, msgpack values),
    ``models/`` (converted and trained models), ``runs/`` (one JSON log per collect),
    ``batches/`` (Batch API records) and ``machines/`` (engine measurements per
    machine). Hand the folder to a colleague and the same workflow runs without calling
    any model. Pass it as ``collect(workspace=...)`` (a path works too); the default is
    ``LAZYLLM_HOME`` or ``./.lazyllm``.

    Parameters
    ----------
    path : path-like
        The folder (created on first use); ``~`` is expanded.

    Raises
    ------
    WorkspaceError
        ``path`` is a file, or a folder that cannot be created (checked here, before
        any model is loaded).

    Notes
    -----
    Cost: nothing on construction but a check of the path; the cache opens on first
    use. Several processes may share one workspace (requests in flight are leased).

    Examples
    --------
    >>> import tempfile, lazyllm
    >>> ws = lazyllm.Workspace(tempfile.mkdtemp())
    >>> ws.path.is_dir()
    True
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)) or str(path) == "":
            raise WorkspaceError(f"The workspace must be a folder path (str or pathlib.Path), got {path!r}. {_FIX}")
        self.path = Path(path).expanduser().absolute()
        check_workspace_path(self.path)
        self._cache: PromptCache | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def cache(self) -> PromptCache:
        if self._cache is None:
            self._cache = PromptCache(self.path / layout.CACHE)
        return self._cache

    def has_cache(self) -> bool:
        return (self.path / layout.CACHE / "data.mdb").exists()

    def subdir(self, name: str) -> Path:
        d = self.path / name
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"Cannot create {d} in the workspace: {exc.strerror or exc}. {_FIX}") from exc
        return d

    @property
    def models_dir(self) -> Path:
        return self.subdir(layout.MODELS)

    @property
    def runs_dir(self) -> Path:
        return self.subdir(layout.RUNS)

    @property
    def results_dir(self) -> Path:
        return self.subdir(layout.RESULTS)

    def write_run_log(self, fingerprint: str, record: dict[str, Any]) -> Path:
        # one clock reading for the second and its fraction, so names sort in time order
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(int(now))) + f".{int(now * 1e6) % 1_000_000:06d}"
        path = self.runs_dir / f"{stamp}-{fingerprint[:12]}.json"
        path.write_text(redact(json.dumps(scrub(record), indent=2, default=str)))  # no key, no URL password
        return path


    def run_logs(self) -> list[Path]:
        """Run logs, oldest first."""
        return run_log_paths(self.path)

    def latest_run(self, fingerprint: str) -> dict[str, Any] | None:
        """The newest run log that collected a frame with this logical fingerprint."""
        for path, record in read_run_logs(self.path, newest_first=True):
            if any(f.get("fingerprint") == fingerprint for f in record.get("frames", [])):
                record["path"] = str(path)
                return record
        return None


def resolve_workspace(workspace: "str | os.PathLike[str] | Workspace | None" = None) -> Workspace:
    """The workspace to use: the argument, else ``LAZYLLM_HOME``, else ``./.lazyllm``."""
    if isinstance(workspace, Workspace):
        return workspace
    if workspace is None:
        workspace = os.environ.get("LAZYLLM_HOME") or ".lazyllm"
    return Workspace(workspace)
