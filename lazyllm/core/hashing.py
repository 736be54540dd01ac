"""Fingerprints: stable content hashes of plan nodes.

A node's fingerprint is SHA-256 over the node type and version, its canonical
parameters (without performance-only settings such as batch size), the identity of
its model spec, and its children's fingerprints (after HF datasets'
``fingerprint.py``: previous fingerprint + transform name@version + sorted
arguments). It is the same across processes, machines and ``PYTHONHASHSEED``;
``id()`` and ``hash()`` are never used.

A value that cannot be canonicalised gets a random fingerprint and a warning, so it
is never wrongly served from the cache.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import secrets
import warnings
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import polars as pl

from lazyllm.core.protocols import ModelSpec

__all__ = ["canonical", "hash_canonical", "FingerprintWarning"]


class FingerprintWarning(UserWarning):
    """A parameter could not be hashed; the node will not be reused from the cache."""


def canonical(value: Any) -> Any:
    """Turn ``value`` into JSON-able data that is equal for equal meaning."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, enum.Enum):
        return {"__enum__": f"{type(value).__name__}.{value.name}"}
    if isinstance(value, ModelSpec):
        return {"__model__": canonical(value.identity())}
    if isinstance(value, pl.Expr):
        return {"__expr__": value.meta.serialize(format="json")}
    if isinstance(value, pl.DataType) or (isinstance(value, type) and issubclass(value, pl.DataType)):
        return {"__dtype__": str(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [canonical(v) for v in value]
        return {"__set__": sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
    if isinstance(value, Mapping):
        return {"__map__": sorted(([str(k), canonical(v)] for k, v in value.items()), key=lambda kv: kv[0])}
    if isinstance(value, bytes):
        return {"__bytes__": hashlib.sha256(value).hexdigest()}
    if isinstance(value, PurePath):
        return {"__path__": value.as_posix()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("performance_only")
        }
        return {"__dataclass__": type(value).__name__, "fields": fields}
    warnings.warn(
        f"Cannot fingerprint a value of type {type(value).__name__}; this node gets a random fingerprint "
        "and will be recomputed on every run. Pass plain data (str, numbers, lists, dicts, polars "
        "expressions) instead.",
        FingerprintWarning,
        stacklevel=3,
    )
    return {"__random__": secrets.token_hex(16)}


def hash_canonical(data: Any) -> str:
    """SHA-256 hex digest of canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_fingerprint(spec: ModelSpec) -> str:
    """Fingerprint of a model spec (its identity, without performance-only options)."""
    return hash_canonical({"model": spec})
