"""The prompt-level cache: LMDB, shared by processes, committed per engine batch.

Key: SHA-256 of (cache format version, model fingerprint, the canonical request:
rendered messages, sampling parameters, seed, sample index, constraint). Value: a
msgpack map (text, token counts, finish reason, time). Never pickle: workspaces are
handed between people. Error responses are not cached, so a rerun retries them.

Several processes may open the same cache (LMDB's lock file); writes are serialised
by LMDB. Each :meth:`PromptCache.put_many` is one transaction, synced to disk when it
commits, so a crash or ``kill -9`` loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from lazyllm.backends.errors import CacheError
from lazyllm.backends.protocols import Request, Response

__all__ = ["PromptCache", "request_key", "CACHE_FORMAT"]

CACHE_FORMAT = 1
_DEFAULT_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as needed
_OPEN: dict[str, lmdb.Environment] = {}
_OPEN_LOCK = threading.Lock()


def request_key(model_fingerprint: str, request: Request) -> bytes:
    """The 32-byte cache key of ``request`` sent to the model with ``model_fingerprint``."""
    payload = {"format": CACHE_FORMAT, "model": model_fingerprint, "request": request.canonical()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def _open_env(path: Path, map_size: int) -> lmdb.Environment:
    real = str(path.resolve())
    with _OPEN_LOCK:
        env = _OPEN.get(real)
        if env is None:
            path.mkdir(parents=True, exist_ok=True)
            try:
                env = lmdb.open(real, map_size=map_size, subdir=True, max_dbs=4, readahead=False)
            except lmdb.Error as exc:
                raise CacheError(f"Cannot open the LMDB cache at {real}: {exc}. Check permissions and disk "
                                 "space, or point the workspace elsewhere (LAZYLLM_HOME).") from exc
            _OPEN[real] = env
        return env


class PromptCache:
    """LLM responses keyed by :func:`request_key`, in an LMDB environment at ``path``.

    Parameters
    ----------
    path : Path
        Folder of the LMDB environment (created if missing).
    map_size : int, optional
        Maximum size in bytes (default 64 GiB, or ``LAZYLLM_CACHE_MAP_SIZE``); the
        file only grows as data is written. It is doubled automatically when full.
    """

    def __init__(self, path: str | os.PathLike[str], map_size: int | None = None) -> None:
        self.path = Path(path)
        size = map_size or int(os.environ.get("LAZYLLM_CACHE_MAP_SIZE", _DEFAULT_MAP_SIZE))
        self._env = _open_env(self.path, size)
        self._db = self._env.open_db(b"responses")

    # -- reads ---------------------------------------------------------------------------
    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Response]:
        """The cached responses among ``keys`` (missing keys are absent from the result)."""
        out: dict[bytes, Response] = {}
        with self._env.begin(db=self._db, buffers=True) as txn:
            for key in keys:
                raw = txn.get(key)
                if raw is not None:
                    out[key] = Response.from_record(self._decode(raw))
        return out

    def contains_many(self, keys: Iterable[bytes]) -> set[bytes]:
        """The subset of ``keys`` present in the cache (no decoding)."""
        with self._env.begin(db=self._db, buffers=True) as txn:
            return {k for k in keys if txn.get(k) is not None}

    def get(self, key: bytes) -> Response | None:
        return self.get_many([key]).get(key)

    # -- writes --------------------------------------------------------------------------
    def put_many(self, items: Iterable[tuple[bytes, Response]], *, model: str = "") -> int:
        """Store successful responses in one transaction; return how many were written."""
        rows = [(k, r) for k, r in items if r.error is None and r.text is not None]
        if not rows:
            return 0
        now = time.time()
        encoded = [(k, msgpack.packb({"v": CACHE_FORMAT, "t": now, "model": model, **r.to_record()})) for k, r in rows]
        while True:
            try:
                with self._env.begin(db=self._db, write=True) as txn:
                    for k, v in encoded:
                        txn.put(k, v)
                return len(encoded)
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def delete_many(self, keys: Iterable[bytes]) -> int:
        n = 0
        with self._env.begin(db=self._db, write=True) as txn:
            for k in keys:
                n += bool(txn.delete(k))
        return n

    def clear(self) -> int:
        """Delete every entry; return how many there were."""
        n = len(self)
        with self._env.begin(write=True) as txn:
            txn.drop(self._db, delete=False)
        return n

    # -- info ----------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._env.begin(db=self._db) as txn:
            return int(txn.stat(self._db)["entries"])

    def stats(self) -> dict[str, Any]:
        info = self._env.info()
        return {
            "path": str(self.path),
            "entries": len(self),
            "file_bytes": sum(f.stat().st_size for f in self.path.glob("*.mdb")),
            "map_size": info["map_size"],
        }

    def items(self) -> Iterable[tuple[bytes, Mapping[str, Any]]]:
        with self._env.begin(db=self._db) as txn:
            for k, v in txn.cursor():
                yield bytes(k), self._decode(v)

    @staticmethod
    def _decode(raw: Any) -> dict[str, Any]:
        try:
            record = msgpack.unpackb(bytes(raw))
        except Exception as exc:  # noqa: BLE001 - any decode failure is a format problem
            raise CacheError(f"A cache entry cannot be decoded ({exc}); clear the cache with `lazyllm cache clear`.")
        if not isinstance(record, dict) or record.get("v") != CACHE_FORMAT:
            raise CacheError("The cache holds entries of an unknown format; clear it with `lazyllm cache clear`.")
        return record
