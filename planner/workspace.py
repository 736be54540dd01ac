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

from lazyllm.backends.redact import redact, scrub

from .cache import PromptCache

__all__ = ["Workspace", "resolve_workspace"]


class Workspace:
    """A workspace folder (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._cache: PromptCache | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def cache(self) -> PromptCache:
        if self._cache is None:
            self._cache = PromptCache(self.path / "cache")
        return self._cache

    def has_cache(self) -> bool:
        return (self.path / "cache" / "data.mdb").exists()

    def subdir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def models_dir(self) -> Path:
        return self.subdir("models")

    @property
    def runs_dir(self) -> Path:
        return self.subdir("runs")

    @property
    def results_dir(self) -> Path:
        return self.subdir("results")

    def write_run_log(self, fingerprint: str, record: dict[str, Any]) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        path = self.runs_dir / f"{stamp}-{fingerprint[:12]}.json"
        path.write_text(redact(json.dumps(scrub(record), indent=2, default=str)))  # no key, no URL password
        return path


    def run_logs(self) -> list[Path]:
        """Run logs, oldest first."""
        d = self.path / "runs"
        return sorted(d.glob("*.json")) if d.is_dir() else []

    def latest_run(self, fingerprint: str) -> dict[str, Any] | None:
        """The newest run log that collected a frame with this logical fingerprint."""
        for path in reversed(self.run_logs()):
            record = json.loads(path.read_text())
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
