"""Synthetic data cards and model cards, built from the plan and the run log.

A **data card** describes how a frame's data was made: every node of the optimized
plan in execution order (kind, parameters, full prompt templates, sampling
parameters), every model (name, revision, license and citation from
:data:`lazyllm.core.catalog.MODEL_INFO`, "unknown" where not known), the
fingerprint of each node and of the whole result, the date, the versions of Python
and of the libraries that matter, the row count and, per LLM node, the cache hits,
LLM calls, tokens and cost of the latest collect (read from the workspace's run
log). It is written as JSON (``lazyllm_card.json``) and as a ``README.md`` with
Hugging Face dataset-card YAML metadata (tags ``synthetic`` and ``lazyllm``, source
models, license, size category).

A **model card** (:func:`model_card`) describes a trained model: base model,
training data fingerprint, hyperparameters, metrics and lineage, with Hugging Face
model-card metadata.

No card ever holds a secret: model identity fields and hyperparameters whose name
says key, token or secret are redacted, credentials inside URLs are removed, and the
values of environment variables named like secrets are blanked out of the text.

Examples
--------
>>> import lazyllm
>>> frame = lazyllm.from_dicts([{"q": "2+2?"}]).generate("a", lazyllm.TestModel(), prompt="Answer: {{ q }}")
>>> _ = frame.collect(progress=False)
>>> card = frame.card()
>>> card.rows, card.fingerprint == frame.fingerprint
(1, True)
>>> [n["kind"] for n in card.nodes]
['DataFrameSource', 'Generate']
>>> "Answer: {{ q }}" in card.to_markdown()
True
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import polars as pl

from lazyllm.core.catalog import MODEL_INFO, ModelInfo
from lazyllm.core.errors import PathNotFoundError, PlanError
from lazyllm.core.protocols import ModelSpec
from lazyllm.core.redact import REDACTED, is_secret_name, redact, redact_url, scrub  # noqa: F401
from lazyllm.planner import nodes as N
from lazyllm.planner.optimizer import optimize
from lazyllm.planner.workspace import Workspace, resolve_workspace
from lazyllm.core.hashing import model_fingerprint
from lazyllm.core.layout import read_run_logs
from lazyllm.core.system import library_versions as _library_versions

if TYPE_CHECKING:
    from .frame import Frame

__all__ = [
    "DataCard",
    "ModelCard",
    "data_card",
    "model_card",
    "model_entry",
    "size_category",
    "library_versions",
    "scrub",
    "CARD_JSON",
    "CARD_README",
]

CARD_FORMAT = 1
CARD_JSON = "lazyllm_card.json"
CARD_README = "README.md"
UNKNOWN = "unknown"

#: Distributions whose versions a card records (``lazyllm-frame`` is this library).
LIBRARIES = ("lazyllm-frame", "polars", "pyarrow", "duckdb", "torch", "transformers", "jinja2", "lmdb",
             "datasets", "huggingface_hub")
_TRAINING_LIBRARIES = ("trl", "peft", "accelerate")

#: Hugging Face size categories, upper bounds exclusive (``n<1K`` = fewer than 1,000 rows).
_SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                 (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                 (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"))

_STAT_FIELDS = ("rows_in", "requests", "unique_requests", "cache_hits", "calls", "failures", "input_tokens",
                "output_tokens", "seconds")


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a lazyllm Frame (anything that holds a plan node and collects).

    Checked by what a frame offers rather than by class, so the modules a Frame's methods
    call (cards, hub) need not import the Frame module back."""
    return isinstance(getattr(value, "plan", None), N.PlanNode) and callable(getattr(value, "collect", None))


# ------------------------------------------------------------------------------------
# Small helpers: sizes, versions, secrets, JSON
# ------------------------------------------------------------------------------------


def size_category(rows: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``rows`` rows.

    >>> size_category(999), size_category(1_000), size_category(250_000)
    ('n<1K', '1K<n<10K', '100K<n<1M')
    """
    for bound, name in _SIZE_BUCKETS:
        if rows < bound:
            return name
    return "n>1T"


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Python's version and the installed versions of :data:`LIBRARIES` (+ ``extra``).

    A library that is not installed is recorded as ``"not installed"``.
    """
    return _library_versions((*LIBRARIES, *extra))


#: Redaction lives on the ground floor (:mod:`lazyllm.core.redact`), shared with the
#: engines, run logs and errors; the card keeps its historical names.
_is_secret_name = is_secret_name
_scrub_url = redact_url
_redact_text = redact


def _jsonable(value: Any) -> Any:
    """Plain JSON data for a node parameter (polars expressions as their text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, ModelSpec):
        return {"model": model_id(value)}
    if isinstance(value, pl.Expr):
        return str(value)
    if isinstance(value, pl.DataFrame):
        return {"rows": value.height, "columns": value.columns}
    if isinstance(value, pl.DataType) or (isinstance(value, type) and issubclass(value, pl.DataType)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, PurePath):
        return value.as_posix()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def _fence(text: str, lang: str = "") -> str:
    """``text`` in a fenced Markdown code block longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _cell(value: Any) -> str:
    """A Markdown table cell."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 0.01 else f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------


def model_id(spec: ModelSpec) -> str:
    """The model's fingerprint (hex SHA-256 of its identity), as the planner computes it."""

    return model_fingerprint(spec)


def _model_name(spec: ModelSpec | str) -> str | None:
    if isinstance(spec, str):
        return spec
    for attr in ("model", "name"):
        value = getattr(spec, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _lookup_info(name: str | None) -> ModelInfo | None:
    if not name:
        return None
    candidates = [name, name.lower()]
    if os.path.isdir(name):
        candidates.append(Path(name).name)
    for key in candidates:
        if key in MODEL_INFO:
            return MODEL_INFO[key]
    return None


def model_entry(spec: ModelSpec | str) -> dict[str, Any]:
    """What a card says about one model: name, revision, license, citation, identity.

    Parameters
    ----------
    spec : ModelSpec or str
        A model spec, or a model name / Hub id.

    Returns
    -------
    dict
        ``id`` (model fingerprint), ``name``, ``provider``, ``model`` (alias, path or
        Hub id), ``hub_id``, ``revision``, ``license`` and ``citation`` (from
        :data:`~lazyllm.core.catalog.MODEL_INFO`, ``"unknown"`` when it has no
        entry; add one with :func:`~lazyllm.core.catalog.register_model_info`) and
        ``identity`` (the spec's fingerprinted fields, secrets redacted).
    """
    name = _model_name(spec)
    info = _lookup_info(name)
    if isinstance(spec, str):
        identity: dict[str, Any] = {"model": spec}
        entry: dict[str, Any] = {"id": hashlib.sha256(spec.encode()).hexdigest(), "name": spec, "provider": UNKNOWN}
    else:
        identity = scrub(_jsonable(spec.identity()))
        entry = {"id": model_id(spec), "name": spec.display_name, "provider": spec.provider}
    revision = getattr(spec, "revision", None) if not isinstance(spec, str) else None
    if revision is None:
        if "source" in identity:  # a packaged alias: the package version and file are its revision
            revision = identity["source"]
        elif "local_content" in identity:
            revision = f"local folder, content sha256:{str(identity['local_content'])[:16]}"
    hub_id = info.hub_id if info is not None and info.hub_id else None
    if hub_id is None and name and "/" in name and not os.path.exists(name):
        hub_id = name
    if name and os.path.isdir(name):
        name = Path(name).name  # a local folder: its name, never this machine's path
    entry.update({
        "model": _scrub_url(name) if name else None,
        "hub_id": hub_id,
        "revision": revision or UNKNOWN,
        "license": (info.license if info is not None else None) or UNKNOWN,
        "citation": (info.citation if info is not None else None) or UNKNOWN,
        "identity": identity,
    })
    return entry


def _source_name(entry: Mapping[str, Any]) -> str:
    """How a card names a source model: its Hub id when known, else its display name."""
    return entry.get("hub_id") or entry["name"]


def _cost(spec: ModelSpec, input_tokens: int, output_tokens: int) -> float | None:
    prices = spec.prices()
    if prices is None:
        return None
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1e6


# ------------------------------------------------------------------------------------
# Data card
# ------------------------------------------------------------------------------------


def _header(metadata: dict[str, Any], title: Any, description: str | None) -> list[str]:
    """The first parts of a card's README: YAML front matter, title, optional description."""
    from huggingface_hub.utils import yaml_dump

    parts = ["---\n" + yaml_dump(metadata, sort_keys=False).strip() + "\n---", f"# {title}"]
    if description:
        parts.append(description)
    return parts


@dataclass(frozen=True)
class DataCard:
    """A synthetic data card: JSON data plus its Markdown rendering.

    Build it with :func:`data_card` (or ``frame.card()``); read a saved one with
    :meth:`DataCard.load`. ``to_dict()`` is plain JSON data.
    """

    data: dict[str, Any]

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

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the card as JSON-able data."""
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = 2) -> str:
        """The card as JSON text (no secrets: see :func:`scrub`)."""
        return _redact_text(json.dumps(self.data, indent=indent, ensure_ascii=False))

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
        return _redact_text("\n\n".join(parts) + "\n")

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

    # -- files ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``README.md`` and ``lazyllm_card.json`` into ``directory`` (created); return it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CARD_README).write_text(self.to_markdown(), encoding="utf-8")
        (out / CARD_JSON).write_text(self.to_json() + "\n", encoding="utf-8")
        return out

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


# ------------------------------------------------------------------------------------
# Model card
# ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    """A model card for a trained model: JSON data plus a Hugging Face README."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the card as JSON-able data."""
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = 2) -> str:
        """The card as JSON text (no secrets)."""
        return _redact_text(json.dumps(self.data, indent=indent, ensure_ascii=False))

    def metadata(self) -> dict[str, Any]:
        """The README's YAML metadata (Hugging Face model card) as a dict."""
        from huggingface_hub import ModelCardData

        d = self.data
        base = d["base_model"]
        return ModelCardData(
            base_model=base["hub_id"] or base["model"],
            library_name=d["library_name"],
            license=d["license"],
            tags=d["tags"],
            datasets=d.get("datasets") or None,
            model_name=d.get("title"),
            lazyllm={"training_data_fingerprint": d["training_data"]["fingerprint"]},
        ).to_dict()

    def to_markdown(self) -> str:
        """A ``README.md``: Hugging Face model-card YAML front matter, then the card as text."""
        d = self.data
        base = d["base_model"]
        parts = _header(self.metadata(), d["title"], d.get("description"))
        method = f" with {d['method']}" if d.get("method") else ""
        parts.append(f"Fine-tuned from `{base['hub_id'] or base['model'] or base['name']}`{method} by lazyllm, on "
                     f"synthetic data with fingerprint `{d['training_data']['fingerprint']}`.")
        parts.append("## Base model\n\n" + _table(("model", "revision", "license"),
                                                  [(base["name"], base["revision"], base["license"])]))
        if base["citation"] != UNKNOWN:
            parts.append(_fence(base["citation"], "bibtex"))
        parts.append("## Hyperparameters\n\n" + (_table(("name", "value"), [
            (k, json.dumps(v) if not isinstance(v, str) else v) for k, v in d["hyperparameters"].items()])
            if d["hyperparameters"] else "none recorded"))
        parts.append("## Metrics\n\n" + (_table(("metric", "value"), d["metrics"].items())
                                         if d["metrics"] else "none recorded"))
        if d["lineage"]:
            parts.append("## Lineage\n\n" + _fence(json.dumps(d["lineage"], indent=2, ensure_ascii=False), "json"))
        parts.append("## Environment\n\n" + _table(("library", "version"), d["versions"].items()))
        return _redact_text("\n\n".join(parts) + "\n")

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``README.md`` and ``lazyllm_card.json`` into ``directory`` (created); return it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CARD_README).write_text(self.to_markdown(), encoding="utf-8")
        (out / CARD_JSON).write_text(self.to_json() + "\n", encoding="utf-8")
        return out


def model_card(
    base_model: ModelSpec | str,
    training_data_fingerprint: str,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    lineage: list[dict[str, Any]] | None = None,
    *,
    method: str | None = None,
    title: str | None = None,
    description: str | None = None,
    license: str | None = None,
    library_name: str | None = None,
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card of a trained model.

    Parameters
    ----------
    base_model : ModelSpec or str
        The model that was fine-tuned (a spec, an alias or a Hub id).
    training_data_fingerprint : str
        Fingerprint of the training frame (``Frame.fingerprint``).
    hyperparameters : dict
        Training settings (learning rate, epochs, LoRA rank...). Entries named like
        secrets (``hub_token``...) are redacted.
    metrics : dict
        Final metrics (name -> number), e.g. ``{"train_loss": 1.23}``.
    lineage : list of dict, optional
        Where the model comes from, oldest first (e.g. data cards' fingerprints,
        earlier training stages).
    method : str, optional
        Training method (``"SFT"``, ``"DPO"``, ``"ORPO"``...); added to the tags.
    license : str, optional
        Default: the base model's license from ``MODEL_INFO``, else ``"unknown"``.
    library_name : str, optional
        Default ``"peft"`` when a hyperparameter name starts with ``lora``, else ``"transformers"``.
    datasets : list of str
        Hub ids of the training datasets, when published.

    Returns
    -------
    ModelCard

    Notes
    -----
    Cost: none (no model is loaded).
    """
    base = model_entry(base_model)
    short_name = (base["hub_id"] or base["model"] or base["name"]).rsplit("/", 1)[-1]
    hp = scrub(_jsonable(dict(hyperparameters)))
    if library_name is None:
        library_name = "peft" if any(str(k).lower().startswith(("lora", "peft")) for k in hp) else "transformers"
    tag_list = ["lazyllm", "trl"] + ([method.lower()] if method else []) + list(tags)
    data = {
        "format": CARD_FORMAT,
        "kind": "lazyllm model card",
        "title": title or f"{short_name} fine-tuned with lazyllm",
        "description": description,
        "method": method,
        "base_model": base,
        "library_name": library_name,
        "license": license or (base["license"] if base["license"] != UNKNOWN else UNKNOWN),
        "tags": list(dict.fromkeys(tag_list)),
        "datasets": list(datasets),
        "training_data": {"fingerprint": training_data_fingerprint},
        "hyperparameters": hp,
        "metrics": scrub(_jsonable(dict(metrics))),
        "lineage": scrub(_jsonable(list(lineage or []))),
        "created_at": _now(),
        "versions": library_versions(_TRAINING_LIBRARIES),
    }
    return ModelCard(data)


def write_model_card(output_dir: str | os.PathLike[str], facts: Mapping[str, Any]) -> ModelCard:
    """Write the card of a finished training into ``output_dir`` (``README.md`` and
    ``lazyllm_card.json``). ``facts``: what the trainer reports
    (``TrainResult.card``: ``base_model``, ``data_fingerprint``, ``hyperparameters``,
    ``metrics``, ``lineage``, ``method``). Registered with the planner
    (:func:`lazyllm.planner.train.register_model_card_writer`) when lazyllm is imported.
    """
    card = model_card(
        str(facts["base_model"]),
        str(facts["data_fingerprint"]),
        dict(facts.get("hyperparameters") or {}),
        dict(facts.get("metrics") or {}),
        lineage=list(facts.get("lineage") or []),
        method=facts.get("method"),
    )
    card.save(output_dir)
    return card
