"""The OpenAI Batch API mode of :class:`lazyllm.backends.openai_api.OpenAIEngine`
(``OpenAI(batch=True)``): requests are uploaded as one JSONL file, submitted as a batch
(50% of the online price on api.openai.com), polled until it ends, and read back.

The batch is recorded in the workspace (``batches/<key>.json``) before it is polled, so
a rerun after a crash resumes the same batch instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai

from lazyllm.core.errors import EngineError
from lazyllm.core.protocols import Request, Response
from lazyllm.core.redact import redact, redact_url

__all__ = ["BatchSubmission", "batch_record_path"]

log = logging.getLogger("lazyllm")

_TERMINAL = {"completed", "failed", "expired", "cancelled"}


def batch_record_path(workspace: Path, batch_key: str) -> Path:
    """Where the batch of the requests whose key is ``batch_key`` is recorded."""
    return Path(workspace) / "batches" / f"{batch_key}.json"


class BatchSubmission:
    """One engine call in batch mode; uses the engine's client, request bodies and parsing."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.spec = engine.spec

    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        """Submit ``requests`` as one batch (or resume the recorded one), poll it until it ends,
        and yield ``(index, Response)`` groups of up to ``spec.concurrency``."""
        engine = self.engine
        spec = self.spec
        failed: list[tuple[int, Response]] = []
        lines: dict[str, dict[str, Any]] = {}  # custom_id -> JSONL line
        slots: dict[str, list[int]] = {}
        guided: dict[str, str | None] = {}
        for i, request in enumerate(requests):
            mode = None
            if request.choices is not None or request.json_schema is not None:
                mode = engine._call(engine._guided())
            try:
                endpoint, body, extra = engine._body(request, mode)
                if endpoint != "chat":
                    raise ValueError("Batch mode sends chat requests only; this request is a raw prompt. "
                                     "Use messages, or batch=False.")
            except ValueError as exc:
                failed.append((i, engine._account(Response.failed(str(exc)))))
                continue
            custom_id = _request_id(spec.identity(), request)
            slots.setdefault(custom_id, []).append(i)
            guided[custom_id] = mode
            lines[custom_id] = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                                "body": {**body, **extra}}
        if failed:
            yield failed
        if not lines:
            return
        batch_key = hashlib.sha256(
            json.dumps([spec.identity(), sorted(lines)], sort_keys=True, default=str).encode()
        ).hexdigest()
        record_path = batch_record_path(engine.workspace, batch_key)
        batch = self._resume_or_create(record_path, batch_key, lines)
        while batch.status not in _TERMINAL:
            time.sleep(spec.poll_interval)
            batch = engine._call(engine._client.batches.retrieve(batch.id, timeout=spec.timeout))
            engine.stats["batch_polls"] += 1
            log.debug("batch %s: %s", batch.id, batch.status)
        results: dict[str, Response] = {}
        for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if file_id:
                for line in self._download(file_id).splitlines():
                    if line.strip():
                        custom_id, response = self._line(json.loads(line), requests, slots, guided)
                        if custom_id in slots and custom_id not in results:
                            results[custom_id] = response
        if batch.status == "completed":
            _write_json(record_path, {**json.loads(record_path.read_text()), "status": batch.status,
                                      "output_file_id": getattr(batch, "output_file_id", None)})
        else:
            record_path.unlink(missing_ok=True)  # the next run submits what failed again
        missing = Response.failed(f"The batch {batch.id} ended with status {batch.status!r} without a result for this "
                         "request. A rerun submits it again (errors are not cached).")
        group: list[tuple[int, Response]] = []
        for custom_id, indices in slots.items():
            response = results.get(custom_id, missing)
            for i in indices:
                group.append((i, engine._account(response)))
                if len(group) >= spec.concurrency:
                    yield group
                    group = []
        if group:
            yield group

    def _resume_or_create(self, record_path: Path, batch_key: str, lines: dict[str, dict[str, Any]]) -> Any:
        """The recorded batch of these requests, or a new one (recorded before it is polled)."""
        engine = self.engine
        spec, client = self.spec, engine._client
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            try:
                batch = engine._call(client.batches.retrieve(record["batch_id"], timeout=spec.timeout))
            except openai.NotFoundError:
                log.warning("the recorded batch %s is unknown to the server; submitting a new one", record["batch_id"])
            else:
                engine.stats["batches_resumed"] += 1
                return batch
        payload = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines.values()).encode()
        try:
            uploaded = engine._call(client.files.create(
                file=(f"lazyllm-{batch_key[:16]}.jsonl", payload), purpose="batch", timeout=spec.timeout))
            batch = engine._call(client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"lazyllm_batch_key": batch_key[:64]}, timeout=spec.timeout))
        except openai.APIError as exc:
            raise EngineError(
                f"Could not submit the batch of {len(lines)} requests to {redact_url(spec.base_url)}: "
                f"{type(exc).__name__}: {redact(str(exc))}. "
                "Check the API key and that the server implements the files and batches endpoints, or use batch=False."
            ) from None
        _write_json(record_path, {
            "batch_id": batch.id, "input_file_id": uploaded.id, "requests": len(lines), "model": spec.model,
            "base_url": redact_url(spec.base_url), "created_at": int(time.time()), "status": batch.status,
        })
        engine.stats["batches_created"] += 1
        return batch

    def _download(self, file_id: str) -> str:
        engine = self.engine
        content = engine._call(engine._client.files.content(file_id, timeout=self.spec.timeout))
        data = getattr(content, "content", content)
        return data.decode() if isinstance(data, bytes) else str(getattr(content, "text", data))

    def _line(self, line: dict[str, Any], requests: Sequence[Request], slots: dict[str, list[int]],
                    guided: dict[str, str | None]) -> tuple[str, Response]:
        custom_id = str(line.get("custom_id"))
        if custom_id not in slots:
            return custom_id, Response.failed("not ours")
        request = requests[slots[custom_id][0]]
        response = line.get("response") or {}
        status = response.get("status_code")
        body = response.get("body") or {}
        if line.get("error") or status != 200:
            reason = line.get("error") or body.get("error") or body
            return custom_id, Response.failed(f"The batch request failed (HTTP {status}): {reason}. A rerun submits it again.")
        try:
            choice = body["choices"][0]
            choice["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            return custom_id, Response.failed(f"The batch result has no choice: {type(exc).__name__}: {exc}.")
        return custom_id, self.engine._chat_choice_response(request, choice, body.get("usage") or {}, guided[custom_id])


def _request_id(identity: dict[str, Any], request: Request) -> str:
    """A stable ``custom_id``: hash of the model identity and the canonical request."""
    text = json.dumps([identity, request.canonical()], sort_keys=True, separators=(",", ":"), default=str)
    return "lazyllm-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
