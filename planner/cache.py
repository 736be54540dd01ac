"""The prompt-level cache: LMDB, shared by processes, committed per engine batch.

Key: SHA-256 of (cache format version, model fingerprint, the canonical request:
rendered messages, sampling parameters, seed, sample index, constraint). Value: a
msgpack map (text, token counts, finish reason, time). Never pickle: workspaces are
handed between people. Error responses are not cached, so a rerun retries them.

Several processes may open the same cache (LMDB's lock file); writes are serialised
by LMDB. Each :meth:`PromptCache.put_many` is one transaction, written to the file and
its data pages flushed to disk when it commits, so a crash or ``kill -9`` loses at most
the batch in flight (the scheduler commits each engine batch as it returns; batches
answered within :data:`~lazyllm.planner.scheduler.COMMIT_WINDOW` of the last commit
share the next one, a window that grows after slow commits up to
:data:`~lazyllm.planner.scheduler.COMMIT_HOLD_MAX`, so with a fast engine a ``kill -9``
also loses that window's answers, at most a second of them). The environment is opened
with ``metasync=False`` (one flush per commit instead of two): a power loss may also
undo the last committed batch, never damage the environment. When one process grows
the map (the cache outgrew ``map_size``), the others adopt the new size at their next
transaction (LMDB's ``MDB_MAP_RESIZED``).

Processes that collect on one workspace share work through *leases* (an LMDB
environment of their own next to the cache's, one per boot of the machine, committed
without a flush: see :func:`_lease_env_path`): before sending a batch, a process leases its
requests (owner, expiry) in one write transaction; requests another live process has
leased are skipped and their results read from the cache when they land. A lease
lapses at its expiry (``LAZYLLM_LEASE_SECONDS``, default 300, renewed as the batch
returns parts) or at once when its owner is a process on this machine that no longer
exists, so a ``kill -9`` loses at most the batch in flight and the others finish it.

A damaged environment is checked by :func:`verify_cache` and salvaged by
:func:`repair_cache` (``lazyllm cache verify`` / ``lazyllm cache repair``): every
entry LMDB can still reach and decode is copied into a new environment; the damaged
one is kept aside for inspection.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from lazyllm.core.errors import CacheError
from lazyllm.core.protocols import Request, Response

__all__ = ["PromptCache", "request_key", "message_key", "message_keys", "CACHE_FORMAT", "CacheCheck", "verify_cache", "repair_cache", "LeaseResult",
           "lease_owner", "lease_seconds", "LEASE_SECONDS"]

CACHE_FORMAT = 1
_DEFAULT_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as needed
_LEASE_MAP_SIZE = 1 << 30  # leases in flight: a few batches per process (doubled when full)
#: Default lease duration in seconds (``LAZYLLM_LEASE_SECONDS`` overrides it).
LEASE_SECONDS = 300.0
_HOST = socket.gethostname()
_OPEN: dict[str, lmdb.Environment] = {}
_OPEN_LOCK = threading.Lock()


def request_key(model_fingerprint: str, request: Request) -> bytes:
    """The 32-byte cache key of ``request`` sent to the model with ``model_fingerprint``.

    SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the cache format,
    the model fingerprint and :meth:`Request.canonical`. Cost: the JSON around the
    messages is built once per (model, sampling params, constraint, sample index) and
    kept (:func:`_skeleton`); per request only the message strings are encoded (the
    encoder :func:`json.dumps` itself uses), so the key is byte-identical to dumping the
    whole payload (:func:`_request_key_reference`).
    """
    return message_key(model_fingerprint, request, request.messages)


def message_key(model_fingerprint: str, shape: Request, messages: tuple[Any, ...]) -> bytes:
    """:func:`request_key` of ``shape`` with its messages replaced by ``messages``, without
    building that request (the scheduler builds requests only for cache misses)."""
    request = shape
    prefix, suffix = _shape_skeleton(model_fingerprint, request)
    enc = _encode_string
    try:
        if prefix is None:  # the placeholder is not unique in the payload: dump it all
            raise TypeError
        text = ",".join(f"[{enc(m.role)},{enc(m.content)}]" for m in messages)
    except TypeError:  # a role or content that is not a string: dump it all
        if messages is not request.messages:
            request = dataclasses.replace(request, messages=tuple(messages))
        return _request_key_reference(model_fingerprint, request)
    return hashlib.sha256(f"{prefix}[{text}]{suffix}".encode("utf-8")).digest()


def message_keys(model_fingerprint: str, shape: Request, messages: list[tuple[Any, ...]]) -> list[bytes]:
    """:func:`message_key` of ``shape`` with each item of ``messages`` (a whole column of rows).

    Parameters
    ----------
    model_fingerprint : str
        The model part of the keys (as for :func:`request_key`).
    shape : Request
        The request of every row, messages aside (same sampling parameters, sample index,
        constraint).
    messages : list of tuple of Message
        One row's rendered messages per item.

    Returns
    -------
    list of bytes
        One 32-byte key per item, in order; byte-identical to :func:`message_key` per row.

    Cost: the key skeleton is looked up once for the column; per row only the message
    strings are JSON-encoded and hashed (SHA-256).
    """
    prefix, suffix = _shape_skeleton(model_fingerprint, shape)
    if prefix is None:
        return [message_key(model_fingerprint, shape, m) for m in messages]
    enc, sha, head, tail = _encode_string, hashlib.sha256, f"{prefix}[", f"]{suffix}"
    out: list[bytes] = []
    append = out.append
    for row in messages:
        try:
            if len(row) == 1:
                m = row[0]
                text = f"[{enc(m.role)},{enc(m.content)}]"
            else:
                text = ",".join(f"[{enc(m.role)},{enc(m.content)}]" for m in row)
        except TypeError:  # a role or content that is not a string: the reference key
            append(message_key(model_fingerprint, shape, row))
            continue
        append(sha(f"{head}{text}{tail}".encode("utf-8")).digest())
    return out


def _shape_skeleton(model_fingerprint: str, request: Request) -> tuple[str | None, str | None]:
    """The key skeleton of ``request``'s shape (:func:`_skeleton`), kept in :data:`_SKELETONS`."""
    p = request.params
    shape_key = (model_fingerprint, request.prompt, repr(p.temperature), repr(p.top_p), type(p.max_tokens), p.max_tokens,
                 type(p.seed), p.seed, p.stop, type(request.sample_index), request.sample_index, request.choices,
                 request.json_schema, bool(request.logprobs), bool(request.reward))
    skeleton = _SKELETONS.get(shape_key)
    if skeleton is None:
        if len(_SKELETONS) >= 4096:
            _SKELETONS.clear()
        skeleton = _SKELETONS[shape_key] = _skeleton(model_fingerprint, request)
    return skeleton


def _request_key_reference(model_fingerprint: str, request: Request) -> bytes:
    """:func:`request_key` by dumping the whole payload (the definition of the key)."""
    payload = {"format": CACHE_FORMAT, "model": model_fingerprint, "request": request.canonical()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


#: How json.dumps(..., ensure_ascii=False) writes a string (the C encoder when available).
_encode_string = json.encoder.encode_basestring
_PLACEHOLDER = "\x00lazyllm-messages\x00"


#: Key-payload skeletons by request shape (everything but the messages, with the types that
#: change the JSON: ``0`` and ``0.0`` are equal in Python but not in JSON); cleared when full.
_SKELETONS: dict[tuple[Any, ...], tuple[str | None, str | None]] = {}


def _skeleton(model_fingerprint: str, request: Request) -> tuple[str | None, str | None]:
    """The canonical JSON of a request's key payload before and after its messages list."""
    canonical = request.canonical()
    canonical["messages"] = _PLACEHOLDER
    payload = {"format": CACHE_FORMAT, "model": model_fingerprint, "request": canonical}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    mark = _encode_string(_PLACEHOLDER)
    if text.count(mark) != 1:
        return None, None
    prefix, _, suffix = text.partition(mark)
    return prefix, suffix


#: LMDB errors that mean the file itself is damaged (as opposed to permissions or space).
_DAMAGE = (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError, lmdb.VersionMismatchError,
           lmdb.BadRslotError, lmdb.BadTxnError, lmdb.BadValsizeError, lmdb.BadDbiError)


def _damaged(path: Path, detail: object) -> CacheError:
    ws = path.absolute().parent
    return CacheError(
        f"The LMDB cache at {path} is damaged ({detail}). Run `lazyllm cache verify --workspace {ws}` to see "
        f"what is readable, then `lazyllm cache repair --workspace {ws}` to copy every readable entry into a "
        "new cache (the damaged one is kept aside; requests whose entries were lost are recomputed)."
    )


def _open_env(path: Path, map_size: int, *, sync: bool = True) -> lmdb.Environment:
    real = str(path.resolve())
    with _OPEN_LOCK:
        env = _OPEN.get(real)
        if env is None:
            try:
                path.mkdir(parents=True, exist_ok=True)
                # metasync=False: one flush per commit (the data pages) instead of two; LMDB keeps the
                # environment consistent, a kill -9 loses nothing committed (the pages are in the OS
                # cache), and only a power loss may undo the last commit (its meta page is flushed
                # with the next commit). sync=False (the leases, see _lease_env_path): no flush at all.
                env = lmdb.open(real, map_size=map_size, subdir=True, max_dbs=4, readahead=False, metasync=False,
                                sync=sync)
            except _DAMAGE as exc:
                raise _damaged(path, exc) from exc
            except (lmdb.Error, OSError) as exc:
                raise CacheError(f"Cannot open the LMDB cache at {real}: {exc}. Check permissions and disk "
                                 "space, or point the workspace elsewhere (LAZYLLM_HOME).") from exc
            _OPEN[real] = env
        return env


def _close_env(path: Path) -> None:
    """Close this process's handle on the environment at ``path`` (if open)."""
    with _OPEN_LOCK:
        env = _OPEN.pop(str(path.resolve()), None)
    if env is not None:
        env.close()


def _boot_id() -> str | None:
    """This boot of the machine (Linux ``/proc/sys/kernel/random/boot_id``), None where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _lease_env_path(cache: Path) -> tuple[Path, bool]:
    """The leases' LMDB environment of the cache at ``cache``, and whether its commits are flushed.

    A lease only means something while its owner process lives, and no process outlives a
    reboot: the leases of this host live in an environment of this boot
    (``<cache>.leases/<host>-<boot id>``), committed without a flush (a ``kill -9`` loses
    nothing, the pages are in the OS cache; a power loss may damage it, and the next boot
    uses a new one). The environments of this host's earlier boots are removed. Where the
    boot is unknown, one environment per host, flushed at each commit as the cache is.
    """
    root = cache.parent / f"{cache.name}.leases"
    boot = _boot_id()
    if boot is None:
        return root / f"{_HOST}-flushed", True
    mine = root / f"{_HOST}-{boot}"
    if root.is_dir():
        for old in root.glob(f"{glob.escape(_HOST)}-*"):
            if old != mine and old.name != f"{_HOST}-flushed":
                shutil.rmtree(old, ignore_errors=True)  # an earlier boot's: no owner of its leases is alive
    return mine, False


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
        lease_path, flushed = _lease_env_path(self.path)
        self._lease_env = _open_env(lease_path, _LEASE_MAP_SIZE, sync=flushed)
        try:
            with self._txn(write=True) as txn:
                self._db = self._env.open_db(b"responses", txn=txn)
            with self._txn() as txn:
                # per thread: the responses' last commit it knows of ("seen") and whether another
                # process, object or thread committed since ("foreign"), so a lease must look for answers
                self._mine = threading.local()
                self._mine.seen, self._mine.foreign = txn.id(), False
            with self._txn(write=True, env=self._lease_env) as txn:
                self._leases = self._lease_env.open_db(b"leases", txn=txn)
        except _DAMAGE as exc:
            raise _damaged(self.path, exc) from exc

    @contextmanager
    def _txn(self, *, write: bool = False, buffers: bool = False,
             env: lmdb.Environment | None = None) -> Iterator[lmdb.Transaction]:
        """A transaction (of the responses' environment unless ``env``); adopts a map grown by
        another process; damage becomes a :class:`CacheError`."""
        env = self._env if env is None else env
        for _ in range(8):
            try:
                txn = env.begin(write=write, buffers=buffers)
                break
            except lmdb.MapResizedError:  # another process grew the map: take its size
                env.set_mapsize(0)
        else:  # pragma: no cover - the map keeps changing under us
            raise CacheError(f"The LMDB cache at {self.path} keeps being resized by another process; rerun.")
        try:
            with txn:
                yield txn
        except _DAMAGE as exc:
            raise _damaged(self.path, exc) from exc

    # -- reads ---------------------------------------------------------------------------
    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Response]:
        """The cached responses among ``keys`` (missing keys are absent from the result)."""
        out: dict[bytes, Response] = {}
        with self._txn(buffers=True) as txn:
            get, db = txn.get, self._db
            for key in keys:
                raw = get(key, db=db)
                if raw is not None:
                    out[key] = self._response(raw)
        return out

    def get_records(self, keys: Iterable[bytes]) -> list[dict[str, Any] | None]:
        """The decoded cache records of ``keys``, in order (None where a key is missing), in one
        read transaction, without building a :class:`Response` per hit.

        Parameters
        ----------
        keys : iterable of bytes
            Request keys (:func:`request_key`).

        Returns
        -------
        list of dict or None
            Per key, the stored record (``text``, ``input_tokens``, ``output_tokens``,
            ``finish_reason``, and ``choice_logprobs`` / ``score`` when stored) or None.
            :meth:`Response.from_record` of a record is what :meth:`get_many` returns.

        Raises
        ------
        CacheError
            A value that is not a record of this cache format (as :meth:`get_many`).

        Cost: one LMDB read transaction and one msgpack decode per hit.
        """
        out: list[dict[str, Any] | None] = []
        append, unpack = out.append, msgpack.unpackb
        with self._txn(buffers=True) as txn:
            get, db = txn.get, self._db
            for key in keys:
                raw = get(key, db=db)
                if raw is None:
                    append(None)
                    continue
                try:
                    record = unpack(raw)
                except Exception:  # noqa: BLE001 - reported by the full check below
                    record = None
                if type(record) is not dict or record.get("v") != CACHE_FORMAT or "text" not in record:
                    record = self._checked(raw)[0]  # raises the CacheError that names the problem
                append(record)
        return out

    def contains_many(self, keys: Iterable[bytes]) -> set[bytes]:
        """The subset of ``keys`` present in the cache (no decoding)."""
        with self._txn(buffers=True) as txn:
            return {k for k in keys if txn.get(k, db=self._db) is not None}

    def get(self, key: bytes) -> Response | None:
        return self.get_many([key]).get(key)

    # -- writes --------------------------------------------------------------------------
    def put_many(self, items: Iterable[tuple[bytes, Response]], *, model: str = "", owner: str | None = None) -> int:
        """Store successful responses in one transaction; return how many were written.

        With ``owner``, the leases that owner holds on these keys (errors included)
        are released once the answers are committed (another process that finds a lease
        gone finds its answer stored).
        """
        items = list(items)
        rows = [(k, r) for k, r in items if r.error is None and r.text is not None]
        if not rows and owner is None:
            return 0
        now = time.time()
        pack = msgpack.Packer().pack  # msgpack.packb's bytes, one packer for the transaction
        encoded = [(k, pack({"v": CACHE_FORMAT, "t": now, "model": model, **r.to_record()})) for k, r in rows]
        while encoded:
            try:
                with self._txn(write=True) as txn:
                    txn.cursor(db=self._db).putmulti(encoded)  # LMDB's own loop, not a Python call per put
                    mine = self._mine
                    if txn.id() != getattr(mine, "seen", -2) + 1:  # someone else committed since
                        mine.foreign = True
                    mine.seen = txn.id()
                break
            except lmdb.MapFullError:
                self._grow(self._env)
        if owner is not None:  # after the answers are committed: a lease gone means its answer is stored
            self.release([k for k, _ in items], owner)
        return len(encoded)

    # -- leases: requests in flight in some process ---------------------------------------
    def lease(self, keys: Iterable[bytes], owner: str, *, seconds: float | None = None,
              now: float | None = None, misses: bool = False) -> "LeaseResult":
        """Lease the keys that are neither cached nor leased by another live owner, in one transaction.

        Parameters
        ----------
        keys : iterable of bytes
            Request keys about to be sent to an engine.
        owner : str
            This run's owner id (:func:`lease_owner`).
        seconds : float, optional
            Lease duration (default ``LAZYLLM_LEASE_SECONDS`` or :data:`LEASE_SECONDS`).
        misses : bool
            True when the caller found every key missing through this object and has not
            stored any of them since (the scheduler's queued requests). Then, while no other
            process, object or thread has committed answers since this object opened in this
            thread, no key can be cached: the read of each key's answer (a random B-tree
            read, about 1 µs at 300k entries) is skipped, and the keys are leased in one LMDB
            call (``putmulti`` without overwrite) unless some are leased already, which then
            go through the per-key rules.

        Returns
        -------
        LeaseResult
            ``acquired`` (now leased by ``owner``, renewed if it held them),
            ``cached`` (stored meanwhile) and ``elsewhere`` (leased by another live owner).
        """
        now = time.time() if now is None else now
        expires = now + (seconds if seconds is not None else lease_seconds())
        value = msgpack.packb({"o": owner, "e": expires})  # the same lease for every key
        keys = list(keys)
        out = LeaseResult()
        while True:
            try:
                # the leases' write transaction first: a lease another process released before it
                # began had its answer committed before (put_many), so the read below sees it
                with self._txn(write=True, env=self._lease_env) as txn, self._txn() as stored:
                    get, put, leases = txn.get, txn.put, self._leases
                    cached, responses = stored.get, self._db
                    # only this thread of this object committed answers since it opened, and none of
                    # these: none is stored
                    mine = self._mine
                    mine.foreign = getattr(mine, "foreign", True) or stored.id() != mine.seen
                    look = mine.foreign or not misses
                    if not look:  # no answer to look for: every key leased in one LMDB call where none is leased yet
                        _, added = txn.cursor(db=leases).putmulti([(k, value) for k in keys], overwrite=False)
                        if added == len(keys):
                            out.acquired = keys
                            return out
                    for key in keys:
                        if look and cached(key, db=responses) is not None:
                            out.cached.append(key)
                            continue
                        raw = get(key, db=leases)
                        if raw == value and not look:  # put by the call above
                            out.acquired.append(key)
                            continue
                        if raw is not None and not _lapsed(msgpack.unpackb(raw), owner, now):
                            out.elsewhere.append(key)
                            continue
                        put(key, value, db=leases)
                        out.acquired.append(key)
                return out
            except lmdb.MapFullError:
                out = LeaseResult()
                self._grow(self._lease_env)

    def release(self, keys: Iterable[bytes], owner: str) -> None:
        """Release the leases ``owner`` holds on ``keys`` (others' leases are left alone)."""
        keys = list(keys)
        if not keys:
            return
        with self._txn(write=True, env=self._lease_env) as txn:
            self._release(txn, keys, owner)

    def _release(self, txn: lmdb.Transaction, keys: Iterable[bytes], owner: str) -> None:
        # a lease of ``owner`` is the map {"o": owner, "e": expiry} (:meth:`lease`): it starts with these bytes
        head = b"\x82" + msgpack.packb("o") + msgpack.packb(owner)
        cursor = txn.cursor(db=self._leases)
        find, value, delete = cursor.set_key, cursor.value, cursor.delete
        for key in keys:  # each lease found once and deleted where the cursor stands
            if find(key):
                raw = value()
                if raw.startswith(head) or msgpack.unpackb(raw).get("o") == owner:
                    delete()

    def leased_elsewhere(self, keys: Iterable[bytes], owner: str, *, now: float | None = None) -> set[bytes]:
        """The keys under a live lease of an owner other than ``owner`` (read-only)."""
        now = time.time() if now is None else now
        with self._txn(env=self._lease_env) as txn:
            out = set()
            for key in keys:
                raw = txn.get(key, db=self._leases)
                if raw is not None and not _lapsed(msgpack.unpackb(raw), owner, now):
                    out.add(key)
            return out

    def _grow(self, env: lmdb.Environment) -> None:
        """Double the map of ``env``. LMDB requires that this process has no open transaction;
        other processes adopt the new size at their next transaction (see :meth:`_txn`)."""
        mine = env.info()["map_size"]
        env.set_mapsize(0)  # the size in the file: another process may have grown it further
        env.set_mapsize(max(mine, env.info()["map_size"]) * 2)

    def delete_many(self, keys: Iterable[bytes]) -> int:
        n = 0
        with self._txn(write=True) as txn:
            for k in keys:
                n += bool(txn.delete(k, db=self._db))
        return n

    def clear(self) -> int:
        """Delete every entry; return how many there were."""
        n = len(self)
        with self._txn(write=True) as txn:
            txn.drop(self._db, delete=False)
        return n

    # -- info ----------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._txn() as txn:
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
        with self._txn() as txn:
            for k, v in txn.cursor(db=self._db):
                yield bytes(k), self._decode(v)

    def _decode(self, raw: Any) -> dict[str, Any]:
        return self._checked(raw)[0]

    def _response(self, raw: Any) -> Response:
        return self._checked(raw)[1]

    def _checked(self, raw: Any) -> tuple[dict[str, Any], Response]:
        """The record and response of one value, decoded once; a :class:`CacheError` naming
        ``lazyllm cache repair`` when it is not a value of this format."""
        record, response, problem = _parse_value(raw)
        if problem is not None:
            ws = self.path.absolute().parent
            raise CacheError(f"A cache entry in {self.path} {problem}. Run `lazyllm cache repair --workspace {ws}` "
                             "to drop unreadable entries and keep the rest, or `lazyllm cache clear` to start over.")
        return record, response  # type: ignore[return-value]


def _parse_value(raw: Any) -> tuple[dict[str, Any] | None, Response | None, str | None]:
    """``(record, response, None)`` for a cache value of this format, else ``(None, None, why)``.

    One msgpack decode (``raw`` may be an LMDB buffer: msgpack reads it without a copy)
    and one :meth:`Response.from_record`, which is also the format check.
    """
    try:
        record = msgpack.unpackb(raw)
    except Exception as exc:  # noqa: BLE001 - any decode failure is a format problem
        return None, None, f"cannot be decoded ({exc})"
    if not isinstance(record, dict) or record.get("v") != CACHE_FORMAT:
        return None, None, "has an unknown format"
    try:
        return record, Response.from_record(record), None
    except (KeyError, TypeError, ValueError) as exc:
        return None, None, f"is not a response record ({exc!r})"


def _format_problem(raw: Any) -> str | None:
    """Why ``raw`` is not a cache value of this format (None when it is one)."""
    return _parse_value(raw)[2]


@dataclass
class LeaseResult:
    """What :meth:`PromptCache.lease` did with each key."""

    acquired: list[bytes] = field(default_factory=list)
    cached: list[bytes] = field(default_factory=list)
    elsewhere: list[bytes] = field(default_factory=list)


def lease_owner() -> str:
    """A new owner id for leases: ``host:pid:random`` (one per run)."""
    return f"{_HOST}:{os.getpid()}:{os.urandom(4).hex()}"


def lease_seconds() -> float:
    """The lease duration in seconds: ``LAZYLLM_LEASE_SECONDS``, else :data:`LEASE_SECONDS`.

    Returns
    -------
    float
        Seconds from a lease transaction to the expiry of the leases it takes.
    """
    return float(os.environ.get("LAZYLLM_LEASE_SECONDS") or LEASE_SECONDS)




def _lapsed(lease: Mapping[str, Any], owner: str, now: float) -> bool:
    """Whether a lease no longer holds against ``owner``: its own, expired, or its owner process is gone."""
    holder = str(lease.get("o", ""))
    if holder == owner or float(lease.get("e", 0.0)) <= now:
        return True
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host == _HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True  # killed (kill -9) or exited without releasing
        except PermissionError:
            return False  # alive, another user's
    return False


# ---------------------------------------------------------------------------------------
# verify / repair
# ---------------------------------------------------------------------------------------


@dataclass
class CacheCheck:
    """What :func:`verify_cache` or :func:`repair_cache` found in an LMDB environment.

    Attributes
    ----------
    path : Path
        The environment's folder.
    expected : int or None
        Entries the environment's own statistics record (None when unreadable).
    readable : int
        Entries that LMDB could reach and that decode as cache values of this format.
    bad_values : int
        Entries LMDB could reach whose value does not decode.
    errors : list of str
        LMDB errors met while walking the environment (damaged pages).
    salvaged : int
        Entries copied into the new environment (repair only).
    kept_at : Path or None
        Where the damaged environment was moved (repair only).
    """

    path: Path
    expected: int | None = None
    readable: int = 0
    bad_values: int = 0
    errors: list[str] = field(default_factory=list)
    salvaged: int = 0
    kept_at: Path | None = None

    @property
    def lost(self) -> int | None:
        """Entries that cannot be recovered: bad values plus entries LMDB could not reach
        (None when the environment's statistics are unreadable, so the number is unknown)."""
        if self.expected is None:
            return None if self.errors else self.bad_values
        return self.bad_values + max(0, self.expected - self.readable - self.bad_values)

    @property
    def ok(self) -> bool:
        """No damage found."""
        return not self.errors and self.lost == 0 and self.expected is not None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "expected": self.expected, "readable": self.readable,
                "bad_values": self.bad_values, "lost": self.lost, "errors": self.errors[:20],
                "salvaged": self.salvaged, "kept_at": None if self.kept_at is None else str(self.kept_at)}


def _probe_starts() -> Iterator[bytes | None]:
    """Where to start walking: the first key, then 4096 evenly spread key prefixes.

    Keys are SHA-256 digests, so the prefixes spread over the whole B-tree; a walk
    stopped by a damaged page resumes at the next prefix past it.
    """
    yield None
    for i in range(1, 1 << 12):
        yield (i << 4).to_bytes(2, "big")


def _walk(env: lmdb.Environment, check: CacheCheck) -> dict[bytes, bytes]:
    """Every (key, value) LMDB can still reach in the responses database; fills ``check``."""
    good: dict[bytes, bytes] = {}
    seen: set[bytes] = set()
    try:
        db = env.open_db(b"responses", create=False)
    except lmdb.NotFoundError:
        check.expected = 0
        return good
    except lmdb.Error as exc:
        check.errors.append(f"responses database: {exc}")
        return good
    try:
        with env.begin(db=db) as txn:
            check.expected = int(txn.stat(db)["entries"])
    except lmdb.Error as exc:
        check.errors.append(f"statistics: {exc}")
    def take(cur: lmdb.Cursor) -> bool:
        key = bytes(cur.key())
        if key in seen:
            return False  # joined a stretch already walked
        seen.add(key)
        value = bytes(cur.value())
        if len(key) == 32 and _format_problem(value) is None:
            good[key] = value
        else:
            check.bad_values += 1
        return True

    def walk(start: bytes | None, backwards: bool = False) -> None:
        try:
            with env.begin(db=db) as txn:
                cur = txn.cursor()
                if backwards:
                    ok = cur.last()
                    while ok and take(cur):
                        ok = cur.prev()
                    return
                ok = cur.first() if start is None else cur.set_range(start)
                while ok and take(cur):
                    ok = cur.next()
        except lmdb.Error as exc:
            if str(exc) not in check.errors:
                check.errors.append(str(exc))

    walk(None, backwards=True)
    for start in _probe_starts():
        walk(start)
    check.readable = len(good)
    return good


def _open_for_check(path: Path) -> tuple[lmdb.Environment | None, CacheCheck]:
    check = CacheCheck(path=path)
    if not (path / "data.mdb").is_file():
        check.errors.append(f"no LMDB environment at {path} (data.mdb is missing)")
        return None, check
    try:
        return _open_env(path, int(os.environ.get("LAZYLLM_CACHE_MAP_SIZE", _DEFAULT_MAP_SIZE))), check
    except CacheError as exc:
        check.errors.append(str(exc.__cause__ or exc))
        return None, check


def verify_cache(path: str | os.PathLike[str]) -> CacheCheck:
    """Check the LMDB environment at ``path`` and the format of every value; change nothing.

    Parameters
    ----------
    path : path-like
        The environment's folder (``<workspace>/cache``).

    Returns
    -------
    CacheCheck
        ``ok`` is True when every entry the environment counts is reachable and decodes.
    """
    env, check = _open_for_check(Path(path))
    if env is not None:
        _walk(env, check)
    return check


def repair_cache(path: str | os.PathLike[str]) -> CacheCheck:
    """Copy every readable entry of the LMDB environment at ``path`` into a new environment.

    The new environment replaces the old one at ``path``; the old one is moved to
    ``<path>.damaged-<time>`` (delete it once you are satisfied). Entries that cannot
    be read are reported as lost: a later collect recomputes those requests. Stop
    other processes using the workspace first.

    Parameters
    ----------
    path : path-like
        The environment's folder (``<workspace>/cache``).

    Returns
    -------
    CacheCheck
        With ``salvaged`` (entries copied), ``lost`` and ``kept_at``.
    """
    path = Path(path)
    env, check = _open_for_check(path)
    good = _walk(env, check) if env is not None else {}
    _close_env(path)
    fresh = path.with_name(path.name + ".repair")
    shutil.rmtree(fresh, ignore_errors=True)
    new = lmdb.open(str(fresh), map_size=max(_DEFAULT_MAP_SIZE, sum(map(len, good.values())) * 4), subdir=True,
                    max_dbs=4, readahead=False)
    try:
        db = new.open_db(b"responses")
        with new.begin(db=db, write=True) as txn:
            for key, value in good.items():
                txn.put(key, value)
        new.sync(True)
    finally:
        new.close()
    check.salvaged = len(good)
    if path.exists():
        check.kept_at = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        path.rename(check.kept_at)
    fresh.rename(path)
    return check
