"""The vLLM worker process: runs ``vllm.LLM`` for :class:`lazyllm.backends.vllm_engine.VLLMEngine`.

Run as a script by the interpreter that has vLLM (``.venv-vllm/bin/python``), so it
imports only the standard library and vLLM, never lazyllm (whose dependencies need
not be installed there). Protocol: one JSON object per line on stdin, one answer per
line on the original stdout; everything vLLM prints goes to stderr (fd 1 is pointed
at fd 2 before vLLM is imported).

Commands
--------
``{"op": "load", "llm": {...}, "lora": {"name", "path"} | null}``
    Build ``vllm.LLM(**llm)``. Answer ``{"ok": true, "version": ...}``.
``{"op": "submit", "requests": [...]}``
    Each request: ``tag`` (an int the engine picks), ``messages`` (list of
    ``{"role", "content"}``) or ``prompt``; ``params`` (``temperature``, ``top_p``,
    ``max_tokens``, ``stop``, ``seed`` or null); ``choices`` or ``json_schema`` (text) or
    neither; ``logprobs`` (with ``choices``). No answer of its own: the requests join the running batch (vLLM's continuous
    batching, through ``LLM.enqueue_chat`` / ``LLM.enqueue`` and ``LLMEngine.step``), and
    after each engine step the requests that finished are answered in one line
    ``{"ok": true, "results": [[tag, result], ...]}``; a result is ``{"text",
    "input_tokens", "output_tokens", "finish_reason"}`` or ``{"error": "..."}``. A
    ``logprobs`` request is not decoded: the prompt followed by each choice that no other
    choice extends joins the batch as a request of its own (``prompt_logprobs=0``, one
    generated token; vLLM's prefix cache shares the prompt's prefill), and its result,
    once every such path has finished, has ``"choice_tokens"`` (the token ids of each
    choice), ``"paths"`` (``[token ids, per-token logprobs]`` of each maximal choice) and
    ``"text": null``.
``{"op": "abort", "tags": [...]}``
    Stop those requests if unfinished (the engine gave up on them). No answer.
``{"op": "close"}``
    Answer ``{"ok": true}`` and exit.

A reader thread queues the commands, so requests submitted while the engine steps are
added between two steps. A failed command answers ``{"ok": false, "error": "..."}``; a
failed engine step answers ``{"ok": false, "error": "...", "tags": [every unfinished tag]}``
and the worker goes on serving commands (the engine restarts it).
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder is sys.path[0]; it holds a module named
# ``transformers`` (lazyllm's engine) that would shadow the real package.
_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402


def _protocol_stream() -> Any:
    """The original stdout for answers; fd 1 then points at stderr, for vLLM's prints."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Worker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.lora: Any = None
        self.vllm: Any = None
        self.tags: dict[str, int] = {}  # vLLM request id -> the engine's tag
        # logprobs requests: tag -> {"result": ..., "left": paths unfinished}; path request id -> (choice, prompt len)
        self.scoring: dict[int, dict[str, Any]] = {}
        self.paths: dict[str, tuple[list[int], int]] = {}

    def load(self, llm: dict[str, Any], lora: dict[str, Any] | None) -> dict[str, Any]:
        import vllm

        self.vllm = vllm
        self.llm = vllm.LLM(**llm)
        if lora:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(lora["name"], 1, lora["path"])
        return {"version": vllm.__version__}

    def _params(self, request: dict[str, Any]) -> Any:
        from vllm import SamplingParams

        p = request["params"]
        kwargs: dict[str, Any] = {
            "n": 1, "temperature": p["temperature"], "top_p": p["top_p"], "max_tokens": p["max_tokens"],
            "stop": list(p["stop"]) or None, "seed": p.get("seed"),
        }
        if request.get("choices") is not None or request.get("json_schema") is not None:
            from vllm.sampling_params import StructuredOutputsParams

            if request.get("choices") is not None:
                kwargs["structured_outputs"] = StructuredOutputsParams(choice=list(request["choices"]))
            else:
                kwargs["structured_outputs"] = StructuredOutputsParams(json=json.loads(request["json_schema"]))
        return SamplingParams(**kwargs)

    def submit(self, requests: list[dict[str, Any]]) -> list[list[Any]]:
        """Add requests to the engine; return the answers known at once (rejected ones)."""
        done: list[list[Any]] = []
        groups: dict[bool, list[tuple[int, Any, dict[str, Any]]]] = {True: [], False: []}
        for request in requests:
            if request.get("logprobs"):
                try:
                    done.extend(self._submit_scoring(request))
                except Exception as exc:  # noqa: BLE001 - fails this row only
                    self.abort({request["tag"]})
                    done.append([request["tag"], {"error": f"vLLM could not score the choices: "
                                                            f"{type(exc).__name__}: {exc}"}])
                continue
            try:
                params = self._params(request)
            except Exception as exc:  # noqa: BLE001 - a bad constraint fails its row only
                done.append([request["tag"], {"error": f"vLLM rejected the sampling params: "
                                                        f"{type(exc).__name__}: {exc}"}])
                continue
            groups[bool(request.get("messages"))].append((request["tag"], params, request))
        for chat, items in groups.items():
            if not items:
                continue
            try:
                ids = self._enqueue(chat, items)
            except Exception:  # noqa: BLE001 - one bad request (a prompt too long...): add them one by one
                ids = []
                for item in items:
                    try:
                        ids += self._enqueue(chat, [item])
                    except Exception as exc:  # noqa: BLE001 - fails its row only
                        done.append([item[0], {"error": f"vLLM rejected the request: {type(exc).__name__}: {exc}"}])
                        ids.append(None)
                items = [item for item, rid in zip(items, ids) if rid is not None]
                ids = [rid for rid in ids if rid is not None]
            for (tag, _, _), rid in zip(items, ids, strict=True):
                self.tags[rid] = tag
                self.tags[rid.split("-", 1)[0]] = tag  # outputs name the request id without vLLM's suffix
        return done

    def _submit_scoring(self, request: dict[str, Any]) -> list[list[Any]]:
        """Add the paths of a ``logprobs`` request: the prompt followed by each maximal choice."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tokenizer = self.llm.get_tokenizer()
        if request.get("messages"):
            text = tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            ids = list(tokenizer(request.get("prompt") or "")["input_ids"])
        choices = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in request["choices"]]
        maximal: list[list[int]] = []
        for c in choices:
            if c and c not in maximal and not any(len(d) > len(c) and d[: len(c)] == c for d in choices):
                maximal.append(c)
        result = {"text": None, "input_tokens": len(ids), "output_tokens": 0, "finish_reason": "stop",
                  "choice_tokens": choices, "paths": []}
        tag = request["tag"]
        if not maximal:
            return [[tag, result]]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        rids = self.llm.enqueue([TokensPrompt(prompt_token_ids=ids + m) for m in maximal], params, use_tqdm=False,
                                lora_request=self.lora)
        self.scoring[tag] = {"result": result, "left": len(rids)}
        for rid, m in zip(rids, maximal, strict=True):
            for key in (rid, rid.split("-", 1)[0]):
                self.tags[key] = tag
                self.paths[key] = (m, len(ids))
        return []

    def _enqueue(self, chat: bool, items: list[tuple[int, Any, dict[str, Any]]]) -> list[str]:
        params = [p for _, p, _ in items]
        if chat:
            return self.llm.enqueue_chat([r["messages"] for _, _, r in items], params, use_tqdm=False,
                                         lora_request=self.lora)
        return self.llm.enqueue([r["prompt"] or "" for _, _, r in items], params, use_tqdm=False,
                                lora_request=self.lora)

    @property
    def busy(self) -> bool:
        return self.llm is not None and self.llm.llm_engine.has_unfinished_requests()

    def step(self) -> list[list[Any]]:
        """One engine step; the requests that finished in it."""
        done = []
        for output in self.llm.llm_engine.step():
            if not output.finished:
                continue
            tag = self.tags.pop(output.request_id, None)
            if tag is None:
                tag = self.tags.pop(output.request_id.split("-", 1)[0], None)
            else:
                self.tags.pop(output.request_id.split("-", 1)[0], None)
            if tag is None:
                continue
            if tag not in self.scoring:
                done.append([tag, _result(output)])
                continue
            m, n = self.paths.pop(output.request_id, None) or self.paths.pop(output.request_id.split("-", 1)[0])
            self.paths.pop(output.request_id.split("-", 1)[0], None)
            logprobs = output.prompt_logprobs
            entry = self.scoring[tag]
            entry["result"]["paths"].append([m, [float(logprobs[n + j][t].logprob) for j, t in enumerate(m)]])
            entry["left"] -= 1
            if entry["left"] == 0:
                del self.scoring[tag]
                done.append([tag, entry["result"]])
        return done

    def abort(self, tags: set[int]) -> None:
        """Stop the unfinished requests of these tags (their engine call was given up)."""
        ids = [rid for rid, tag in self.tags.items() if tag in tags]
        for rid in ids:
            del self.tags[rid]
            self.paths.pop(rid, None)
        for tag in tags:
            self.scoring.pop(tag, None)
        if ids and self.llm is not None:
            self.llm.llm_engine.abort_request(ids)

    def abandon(self) -> list[int]:
        """After a failed step: forget every unfinished request; return their tags."""
        tags = sorted(set(self.tags.values()))
        try:
            self.llm.llm_engine.abort_request(list(self.tags))
        except Exception:  # noqa: BLE001 - the engine may be dead
            traceback.print_exc()
        self.tags.clear()
        self.paths.clear()
        self.scoring.clear()
        return tags


def _result(output: Any) -> dict[str, Any]:
    completion = output.outputs[0]
    reason = completion.finish_reason
    return {
        "text": completion.text,
        "input_tokens": len(output.prompt_token_ids or ()),
        "output_tokens": len(completion.token_ids or ()),
        "finish_reason": "length" if reason == "length" else "stop",
    }


def _read_commands(commands: queue.Queue[str | None]) -> None:
    for line in sys.stdin:
        if line.strip():
            commands.put(line)
    commands.put(None)  # stdin closed: the engine is gone


def main() -> None:
    out = _protocol_stream()
    worker = Worker()
    commands: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_commands, args=(commands,), daemon=True).start()

    def send(answer: dict[str, Any]) -> None:
        out.write(json.dumps(answer) + "\n")

    while True:
        # wait for a command only when the engine has nothing to do; else take what has come
        lines: list[str | None] = []
        try:
            lines.append(commands.get(block=not worker.busy))
            while True:
                lines.append(commands.get_nowait())
        except queue.Empty:
            pass
        for line in lines:
            if line is None:
                out.flush()
                return
            try:
                command = json.loads(line)
                op = command.get("op")
                if op == "load":
                    send({"ok": True, **worker.load(command["llm"], command.get("lora"))})
                elif op == "submit":
                    done = worker.submit(command["requests"])
                    if done:
                        send({"ok": True, "results": done})
                elif op == "abort":
                    worker.abort(set(command["tags"]))
                elif op == "close":
                    send({"ok": True})
                    out.flush()
                    return
                else:
                    raise ValueError(f"unknown op {op!r}")
            except Exception as exc:  # noqa: BLE001 - answer the error, keep serving
                traceback.print_exc()
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if op == "submit":  # its requests fail (those added already are abandoned with them)
                    answer["tags"] = [r.get("tag") for r in command.get("requests", [])]
                    worker.abort(set(answer["tags"]))
                send(answer)
        if worker.busy:
            try:
                done = worker.step()
            except Exception as exc:  # noqa: BLE001 - vLLM failed as a whole: fail what is in flight
                traceback.print_exc()
                send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "tags": worker.abandon()})
                continue
            if done:
                send({"ok": True, "results": done})


if __name__ == "__main__":  # vLLM starts processes: the engine must run under this guard
    main()
