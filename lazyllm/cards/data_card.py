"""The synthetic data card of a frame: the optimized plan, models, fingerprints and the
LLM work of the latest collect (read from the workspace's run logs)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any


from lazyllm.core.errors import PathNotFoundError, PlanError
from lazyllm.core.layout import read_run_logs
from lazyllm.core.redact import redact
from lazyllm.planner import nodes as N
from lazyllm.planner.optimizer import optimize
from lazyllm.planner.workspace import Workspace, resolve_workspace

from .base import (CARD_FORMAT, CARD_JSON, UNKNOWN, _STAT_FIELDS, Card, _cost, _fence, _header, _jsonable, _now, _source_name,
                   _table, is_frame, library_versions, model_entry, model_id, size_category)

if TYPE_CHECKING:
    from lazyllm.frame import Frame


@dataclass(frozen=True)
class DataCard(Card):
    """A synthetic data card: JSON data plus its Markdown rendering.

    Build it with :func:`data_card` (or ``frame.card()``); read a saved one with
    :meth:`DataCard.load`. ``to_dict()`` is plain JSON data.
    """

    # -- access --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Logical fingerprint of the frame (equal to ``Frame.fingerprint``)."""
        return self.data["fingerprint"]["logical"]

    @property
    def rows(self) -> int | None:
        """Row count of the latest collect (or of the saved dataset), None when unknown."""
        return self.data.get("rows")

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """The optimized plan's nodes, in execution order (inputs first)."""
        return self.data["nodes"]

    @property
    def models(self) -> list[dict[str, Any]]:
        """Every model the plan uses."""
        return self.data["models"]


    def with_dataset(self, splits: Mapping[str, Mapping[str, Any]]) -> "DataCard":
        """A copy that describes the saved dataset's layout.

        Parameters
        ----------
        splits : mapping
            split name -> ``{"rows": int or None, "files": [paths relative to the dataset root]}``.
            Listed in the README's ``configs`` so ``datasets.load_dataset(repo)`` finds them.
        """
        data = copy.deepcopy(self.data)
        data["dataset"] = {"splits": {name: {"rows": s.get("rows"), "files": list(s["files"])}
                                      for name, s in splits.items()}}
        return DataCard(data)

    # -- Markdown ------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The README's YAML metadata (Hugging Face dataset card) as a dict."""
        from huggingface_hub import DatasetCardData

        d = self.data
        rows = d.get("rows")
        splits = (d.get("dataset") or {}).get("splits") or {}
        if splits and all(s.get("rows") is not None for s in splits.values()):
            rows = sum(s["rows"] for s in splits.values())
        configs = None
        if splits:
            configs = [{"config_name": "default",
                        "data_files": [{"split": name, "path": s["files"]} for name, s in splits.items()]}]
        sources = sorted({_source_name(m) for m in d["models"]})
        card_data = DatasetCardData(
            pretty_name=d.get("title"),
            license=d.get("license") or UNKNOWN,
            language=d.get("language"),
            size_categories=[size_category(rows)] if rows is not None else None,
            task_categories=d.get("task_categories"),
            annotations_creators=["machine-generated"],
            language_creators=["machine-generated"],
            tags=list(dict.fromkeys(["synthetic", "lazyllm", *d.get("tags", [])])),
            source_models=sources,
            configs=configs,
            lazyllm={"fingerprint": d["fingerprint"]["logical"],
                     "optimized_fingerprint": d["fingerprint"]["optimized"]},
        )
        return card_data.to_dict()

    def to_markdown(self) -> str:
        """A ``README.md``: Hugging Face dataset-card YAML front matter, then the card as text."""
        d = self.data
        run = d["run"]
        parts = _header(self.metadata(), d.get("title"), d.get("description"))
        names = ", ".join(f"`{_source_name(m)}`" for m in d["models"]) or "no model"
        parts.append(f"Synthetic data generated with lazyllm (lazy frames for LLM data workflows) from {names}. "
                     "Everything below is read from the plan and the run log: each node with its full prompt "
                     "templates and sampling parameters, each model with its license, and the fingerprints that "
                     "identify the result.")
        totals = d["totals"]
        summary = [
            ("rows", d.get("rows")),
            ("columns", ", ".join(f"`{c}` ({t})" for c, t in d["columns"].items())),
            ("fingerprint (logical, `Frame.fingerprint`)", f"`{d['fingerprint']['logical']}`"),
            ("fingerprint (optimized plan)", f"`{d['fingerprint']['optimized']}`"),
            ("card created", d["created_at"]),
            ("collected", run["finished_at"] if run["available"] else "never in this workspace"),
            ("LLM calls (latest collect)", totals["calls"]),
            ("cache hits (latest collect)", totals["cache_hits"]),
            ("tokens in / out (latest collect)",
             None if totals["input_tokens"] is None else f"{totals['input_tokens']:,} / {totals['output_tokens']:,}"),
            ("cost, USD (latest collect)", totals["cost_usd"] if totals["cost_usd"] is not None
             else ("n/a" if not run["available"] else "no priced model (local models)")),
        ]
        if run.get("history"):
            h = run["history"]
            summary.append(("LLM calls over all collects", f"{h['calls']:,} in {h['runs']} collect(s)"))
        if d.get("rules_fired"):
            summary.append(("optimizer rules fired", "; ".join(d["rules_fired"])))
        parts.append("## Summary\n\n" + _table(("item", "value"), summary))
        if not run["available"]:
            parts.append(f"> **Run statistics unavailable:** {run['note']}")
        splits = (d.get("dataset") or {}).get("splits") or {}
        if splits:
            parts.append("## Files\n\n" + _table(("split", "rows", "files"), [
                (name, s.get("rows"), ", ".join(f"`{f}`" for f in s["files"])) for name, s in splits.items()]))
        parts.append(self._models_md())
        parts.append(self._plan_md())
        parts.append(self._stats_md())
        at_run = run.get("versions") or {}
        parts.append("## Environment\n\n" + _table(("library", "at collect", "at card time"), [
            (lib, at_run.get(lib, "n/a" if not at_run else "not recorded"), version)
            for lib, version in d["versions"].items()]))
        parts.append("## Reproduce\n\nRun the same workflow with the workspace that produced this card: every "
                     "request is served from its cache and no model is called. Node fingerprints above match "
                     "the `#...` shown by `frame.explain()`.")
        return redact("\n\n".join(parts) + "\n")

    def _models_md(self) -> str:
        d = self.data
        if not d["models"]:
            return "## Source models\n\nNo LLM is used by this plan."
        out = ["## Source models", _table(("model", "provider", "hub id", "revision", "license", "used by"), [
            (m["name"], m["provider"], m["hub_id"], m["revision"], m["license"],
             ", ".join(f"#{fp[:10]}" for fp in m.get("used_by", []))) for m in d["models"]])]
        for m in d["models"]:
            if m["citation"] != UNKNOWN:
                out.append(f"Citation of {m['name']}:\n\n" + _fence(m["citation"], "bibtex"))
            else:
                out.append(f"Citation of {m['name']}: unknown.")
        return "\n\n".join(out)

    def _plan_md(self) -> str:
        out = ["## Plan", "The optimized plan, in execution order (inputs first). Prompt templates are Jinja2 over "
               "the row's columns."]
        models = {m["id"]: m for m in self.data["models"]}
        for node in self.data["nodes"]:
            params = dict(node["params"])
            lines = [f"### {node['index']}. {node['kind']} `#{node['fingerprint'][:10]}`", "",
                     f"- fingerprint: `{node['fingerprint']}`"]
            if node["children"]:
                lines.append("- inputs: " + ", ".join(f"`#{c[:10]}`" for c in node["children"]))
            blocks: list[str] = []
            if "model" in node:
                m = models.get(node["model"], {})
                lines.append(f"- model: {m.get('name', node['model'])} (license {m.get('license', UNKNOWN)})")
                params.pop("model", None)
                sampling = params.pop("sampling", None)
                if sampling is not None:
                    lines.append("- sampling: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sampling.items()))
                for key in ("system", "prompt"):
                    text = params.pop(key, None)
                    if text is not None:
                        label = "System" if key == "system" else "Prompt"
                        blocks.append(f"{label} template:\n\n" + _fence(text, "jinja"))
            if "query" in params:
                blocks.append("Query:\n\n" + _fence(params.pop("query"), "sql"))
            if params:
                lines.append("- parameters: `" + json.dumps(params, ensure_ascii=False).replace("`", "'") + "`")
            stats = node.get("stats")
            if stats is not None:
                lines.append(f"- latest collect: {stats['rows_in']:,} rows in · {stats['requests']:,} requests · "
                             f"{stats['cache_hits']:,} cache hits · {stats['calls']:,} LLM calls · "
                             f"{stats['failures']:,} failed · {stats['input_tokens']:,} tokens in · "
                             f"{stats['output_tokens']:,} tokens out")
            elif "model" in node:
                lines.append("- latest collect: statistics unavailable")
            out.append("\n".join(lines) + ("\n\n" + "\n\n".join(blocks) if blocks else ""))
        return "\n\n".join(out)

    def _stats_md(self) -> str:
        llm = [n for n in self.data["nodes"] if "model" in n]
        if not llm:
            return "## LLM work\n\nNo LLM node."
        models = {m["id"]: m for m in self.data["models"]}
        rows = []
        for n in llm:
            s = n.get("stats") or {}
            rows.append((f"{n['kind']} {n['params'].get('column', '')} #{n['fingerprint'][:10]}",
                         models.get(n["model"], {}).get("name"), s.get("rows_in"), s.get("requests"),
                         s.get("cache_hits"), s.get("calls"), s.get("failures"), s.get("input_tokens"),
                         s.get("output_tokens"), s.get("seconds"), s.get("cost_usd")))
        return "## LLM work (latest collect)\n\n" + _table(
            ("node", "model", "rows in", "requests", "cache hits", "LLM calls", "failures", "tokens in",
             "tokens out", "seconds", "cost USD"), rows)


    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "DataCard":
        """Read a card saved by :meth:`save` (a folder or its ``lazyllm_card.json``).

        Raises
        ------
        PathNotFoundError
            No ``lazyllm_card.json`` there (a ``FileNotFoundError``).
        """
        p = Path(path)
        file = p / CARD_JSON if p.is_dir() else p
        if not file.is_file():
            raise PathNotFoundError(f"No {CARD_JSON} in {p}: save a card with frame.save_dataset(dir) "
                                    "or card.save(dir).")
        return cls(json.loads(file.read_text(encoding="utf-8")))


def _run_history(ws: Workspace, fingerprint: str, node_fps: set[str]) -> dict[str, Any] | None:
    runs = calls = 0
    for _path, record in read_run_logs(ws.path):
        if not any(f.get("fingerprint") == fingerprint for f in record.get("frames", [])):
            continue
        runs += 1
        calls += sum(int(s.get("calls", 0)) for s in record.get("nodes", []) if s.get("fingerprint") in node_fps)
    return {"runs": runs, "calls": calls} if runs else None


def data_card(
    frame: "Frame",
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    *,
    title: str | None = None,
    license: str | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
    task_categories: Sequence[str] | None = None,
    language: Sequence[str] | None = None,
    collect: bool = False,
) -> DataCard:
    """The synthetic data card of ``frame``, from its plan and its latest run log.

    Parameters
    ----------
    frame : Frame
        The frame the data comes from.
    workspace : str, path or Workspace, optional
        Where the frame was collected (default ``LAZYLLM_HOME`` or ``./.lazyllm``);
        its ``runs/`` logs give row count, cache hits, LLM calls and tokens.
    title : str, optional
        Card title (default ``"lazyllm synthetic data <fingerprint[:12]>"``).
    license : str, optional
        License of the data as a Hugging Face license id (default ``"unknown"``).
        The source models' licenses are listed in the card; choosing one that is
        compatible with them is up to you.
    description : str, optional
        A paragraph placed under the title.
    tags : list of str
        Extra tags (``synthetic`` and ``lazyllm`` are always there).
    task_categories, language : list of str, optional
        Hugging Face ``task_categories`` / ``language`` metadata.
    collect : bool
        Collect the frame first when this workspace has no run log for it
        (default False: the card then says that statistics are unavailable).

    Returns
    -------
    DataCard

    Raises
    ------
    PlanError
        ``frame`` is not a lazyllm Frame.

    Notes
    -----
    Cost: no LLM call (it optimizes the plan and reads run logs), except with
    ``collect=True`` on a frame never collected in the workspace: one collect.
    """
    if not is_frame(frame):
        raise PlanError(f"data_card() takes a lazyllm Frame, got {type(frame).__name__}.")
    ws = resolve_workspace(workspace)
    record = ws.latest_run(frame.fingerprint)
    if record is None and collect:
        frame.collect(workspace=ws, progress=False)
        record = ws.latest_run(frame.fingerprint)
    entry = None
    if record is not None:
        entry = next(f for f in record["frames"] if f.get("fingerprint") == frame.fingerprint)
    optimized = optimize(frame.plan)
    plan, rules = optimized.plan, [f"{name}: {note}" for name, note in optimized.fired]
    if entry is not None and entry.get("optimized") == frame.plan.fingerprint != plan.fingerprint:
        plan, rules = frame.plan, []  # that collect ran the plan as written (optimize=False)
    stats = {s["fingerprint"]: s for s in (record or {}).get("nodes", [])}

    models: dict[str, dict[str, Any]] = {}
    node_entries: list[dict[str, Any]] = []
    totals: dict[str, Any] = {k: 0 for k in ("cache_hits", "calls", "failures", "input_tokens", "output_tokens")}
    priced = False
    cost_total = 0.0
    for i, node in enumerate(N.walk(plan), start=1):
        params = _jsonable(node.fingerprint_params())
        item: dict[str, Any] = {"index": i, "kind": node.kind, "fingerprint": node.fingerprint,
                                "children": [c.fingerprint for c in node.children], "params": params}
        if isinstance(node, N.DataFrameSource):
            item["params"] = {"label": node.label, "rows": node.data.height, "columns": node.data.columns, **params}
        elif isinstance(node, N.FileSource):
            item["params"] = {"files": [Path(p).name for p in node.paths], **params}
        if isinstance(node, N.LLMNode):
            mid = model_id(node.model)
            if mid not in models:
                models[mid] = {**model_entry(node.model), "used_by": []}
            models[mid]["used_by"].append(node.fingerprint)
            item["model"] = mid
            item["params"]["model"] = mid
            s = stats.get(node.fingerprint)
            if s is not None:
                st = {k: s.get(k, 0) for k in _STAT_FIELDS}
                st["cost_usd"] = _cost(node.model, int(st["input_tokens"]), int(st["output_tokens"]))
                item["stats"] = st
                for k in totals:
                    totals[k] += int(st[k])
                if st["cost_usd"] is not None:
                    priced, cost_total = True, cost_total + st["cost_usd"]
            else:
                item["stats"] = None
        node_entries.append(item)

    available = record is not None
    if not available:
        totals = {k: None for k in totals}
    totals["cost_usd"] = cost_total if priced else None
    note = ("" if available else
            f"this frame (fingerprint {frame.fingerprint[:12]}) was never collected in workspace {ws.path.name!r}; "
            "collect it there first, or build the card with collect=True")
    run = {
        "available": available,
        "note": note,
        "finished_at": record.get("finished_at") if record else None,
        "seconds": record.get("seconds") if record else None,
        "run_log": Path(record["path"]).name if record and record.get("path") else None,
        "versions": record.get("versions") if record else None,
        "history": _run_history(ws, frame.fingerprint, {n["fingerprint"] for n in node_entries}) if record else None,
    }
    data = {
        "format": CARD_FORMAT,
        "kind": "lazyllm synthetic data card",
        "title": title or f"lazyllm synthetic data {frame.fingerprint[:12]}",
        "description": description,
        "license": license or UNKNOWN,
        "tags": list(tags),
        "task_categories": list(task_categories) if task_categories else None,
        "language": list(language) if language else None,
        "created_at": _now(),
        "fingerprint": {"logical": frame.fingerprint, "optimized": plan.fingerprint},
        "rows": entry.get("rows") if entry else None,
        "columns": {name: str(dtype) for name, dtype in frame.schema.items()},
        "rules_fired": rules,
        "nodes": node_entries,
        "models": list(models.values()),
        "totals": totals,
        "run": run,
        "versions": library_versions(),
    }
    return DataCard(data)
