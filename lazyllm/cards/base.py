"""What every card shares: file names, library versions, model entries (name, license,
citation from :data:`lazyllm.core.catalog.MODEL_INFO`), Markdown helpers and the
:class:`Card` base class (JSON data, ``to_dict``/``to_json``/``save``)."""

from __future__ import annotations

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
from typing import Any

import polars as pl

from lazyllm.core.catalog import MODEL_INFO, ModelInfo
from lazyllm.core.hashing import model_fingerprint
from lazyllm.core.protocols import ModelSpec
from lazyllm.core.redact import redact, redact_url, scrub
from lazyllm.core.system import library_versions as _library_versions
from lazyllm.planner import nodes as N


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
        "model": redact_url(name) if name else None,
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


def _header(metadata: dict[str, Any], title: Any, description: str | None) -> list[str]:
    """The first parts of a card's README: YAML front matter, title, optional description."""
    from huggingface_hub.utils import yaml_dump

    parts = ["---\n" + yaml_dump(metadata, sort_keys=False).strip() + "\n---", f"# {title}"]
    if description:
        parts.append(description)
    return parts


@dataclass(frozen=True)
class Card:
    """What every card shares: JSON data (``data``), its Markdown rendering
    (:meth:`to_markdown`, defined by each kind) and the two files it is saved as."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the card as JSON-able data."""
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = 2) -> str:
        """The card as JSON text (no secrets: see :func:`lazyllm.core.redact.scrub`)."""
        return redact(json.dumps(self.data, indent=indent, ensure_ascii=False))

    def to_markdown(self) -> str:  # pragma: no cover - each kind renders itself
        raise NotImplementedError

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``README.md`` and ``lazyllm_card.json`` into ``directory`` (created); return it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CARD_README).write_text(self.to_markdown(), encoding="utf-8")
        (out / CARD_JSON).write_text(self.to_json() + "\n", encoding="utf-8")
        return out
