"""The workspace's folder layout and its run-log schema (ground floor: every layer reads them).

Layout of a workspace (``./.lazyllm`` unless ``LAZYLLM_HOME`` or an argument says otherwise)::

    <workspace>/
      cache/             LMDB prompt cache (data.mdb, lock.mdb)
      models/            converted models (an alias's GGUF de-quantized once)
      models/trained/    finished trainings, one folder per trained model's fingerprint
      machines/          per-machine engine measurements (``lazyllm doctor --measure``)
      runs/              one JSON run log per collect
      results/           materialised results (parquet)

A run log (format 1) is a JSON object: ``format``; ``finished_at`` (UTC, ISO 8601);
``frames`` (one per collected frame: ``fingerprint`` (logical), ``optimized``, ``rows``,
``rules_fired``); ``seconds``; ``nodes`` (one per LLM node: the fields of
:class:`lazyllm.planner.stats.NodeStats` - ``fingerprint``, ``kind``, ``column``,
``model``, ``calls``, ``cache_hits``, ``input_tokens``, ``output_tokens``, ...);
``replicas`` (Ray executor records) and ``versions`` (library versions). Secrets are
redacted before it is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CACHE", "MODELS", "TRAINED", "MACHINES", "RUNS", "RESULTS", "RUN_LOG_FORMAT", "workspace_models_dir",
           "trained_models_dir", "machines_dir", "runs_dir", "run_log_paths", "read_run_logs", "run_totals"]

CACHE = "cache"
MODELS = "models"
TRAINED = "models/trained"
MACHINES = "machines"
RUNS = "runs"
RESULTS = "results"
RUN_LOG_FORMAT = 1

PathLike = str | os.PathLike[str]


def workspace_models_dir(workspace: PathLike) -> Path:
    """Where converted or downloaded model folders live inside a workspace."""
    return Path(workspace) / MODELS


def trained_models_dir(workspace: PathLike) -> Path:
    """Where finished trainings live inside a workspace."""
    return Path(workspace) / TRAINED


def machines_dir(workspace: PathLike) -> Path:
    """Where per-machine engine measurements live inside a workspace."""
    return Path(workspace) / MACHINES


def runs_dir(workspace: PathLike) -> Path:
    """Where run logs live inside a workspace."""
    return Path(workspace) / RUNS


def run_log_paths(workspace: PathLike) -> list[Path]:
    """The run logs of a workspace, oldest first (none when it has no ``runs/``)."""
    folder = runs_dir(workspace)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def read_run_logs(workspace: PathLike, *, newest_first: bool = False) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` for each readable run log; unreadable files are skipped."""
    paths = run_log_paths(workspace)
    for path in reversed(paths) if newest_first else paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            yield path, record


def run_totals(record: dict[str, Any]) -> dict[str, int]:
    """Sums over a run log's LLM nodes: ``llm_nodes``, ``calls``, ``cache_hits``,
    ``input_tokens``, ``output_tokens``."""
    nodes = record.get("nodes", []) or []
    totals = {key: sum(int(n.get(key, 0) or 0) for n in nodes)
              for key in ("calls", "cache_hits", "input_tokens", "output_tokens")}
    return {"llm_nodes": len(nodes), **totals}
