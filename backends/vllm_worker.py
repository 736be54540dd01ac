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
``{"op": "generate", "requests": [...]}``
    Each request: ``messages`` (list of ``{"role", "content"}``) or ``prompt``;
    ``params`` (``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed`` or null);
    ``choices`` or ``json_schema`` (text) or neither; ``logprobs`` (with ``choices``).
    Answer ``{"ok": true, "results": [...]}`` with, per request, ``{"text",
    "input_tokens", "output_tokens", "finish_reason"}`` or ``{"error": "..."}``. A
    ``logprobs`` request is not decoded: its result has ``"choice_tokens"`` (the
    token ids of each choice) and ``"paths"`` (``[token ids, per-token logprobs]``
    of each choice that no other choice extends, read as ``prompt_logprobs`` of the
    prompt followed by that choice) and ``"text": null``.
``{"op": "close"}``
    Answer ``{"ok": true}`` and exit.

Any failure of a command answers ``{"ok": false, "error": "..."}``; the worker goes on.
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder is sys.path[0]; it holds a module named
# ``transformers`` (lazyllm's engine) that would shadow the real package.
_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import json  # noqa: E402
import os  # noqa: E402
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

    def generate(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        results: list[dict[str, Any] | None] = [None] * len(requests)
        chats: list[int] = []
        prompts: list[int] = []
        params: dict[int, Any] = {}
        scored = [i for i, r in enumerate(requests) if r.get("logprobs")]
        if scored:
            try:
                for i, result in zip(scored, self._choice_paths([requests[i] for i in scored]), strict=True):
                    results[i] = result
            except Exception as exc:  # noqa: BLE001 - fails these rows only
                for i in scored:
                    results[i] = {"error": f"vLLM could not score the choices: {type(exc).__name__}: {exc}"}
        for i, request in enumerate(requests):
            if request.get("logprobs"):
                continue
            try:
                params[i] = self._params(request)
            except Exception as exc:  # noqa: BLE001 - a bad constraint fails its row only
                results[i] = {"error": f"vLLM rejected the sampling params: {type(exc).__name__}: {exc}"}
                continue
            (chats if request.get("messages") else prompts).append(i)
        if chats:
            outputs = self.llm.chat([requests[i]["messages"] for i in chats], [params[i] for i in chats],
                                    use_tqdm=False, lora_request=self.lora)
            for i, output in zip(chats, outputs, strict=True):
                results[i] = _result(output)
        if prompts:
            outputs = self.llm.generate([requests[i]["prompt"] or "" for i in prompts], [params[i] for i in prompts],
                                        use_tqdm=False, lora_request=self.lora)
            for i, output in zip(prompts, outputs, strict=True):
                results[i] = _result(output)
        return {"results": results}


    def _choice_paths(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per request, the log-probability of each token of each maximal choice after the prompt:
        one prompt per maximal choice (prompt + choice tokens), ``prompt_logprobs=0``, one
        generated token (discarded); vLLM's prefix cache shares the prompt's prefill."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tokenizer = self.llm.get_tokenizer()
        prompts: list[Any] = []
        owners: list[tuple[int, list[int], int]] = []
        out: list[dict[str, Any]] = []
        for k, request in enumerate(requests):
            if request.get("messages"):
                text = tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
                ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                ids = list(tokenizer(request.get("prompt") or "")["input_ids"])
            choices = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in request["choices"]]
            maximal = []
            for c in choices:
                if c and c not in maximal and not any(len(d) > len(c) and d[: len(c)] == c for d in choices):
                    maximal.append(c)
            for m in maximal:
                prompts.append(TokensPrompt(prompt_token_ids=ids + m))
                owners.append((k, m, len(ids)))
            out.append({"text": None, "input_tokens": len(ids), "output_tokens": 0, "finish_reason": "stop",
                        "choice_tokens": choices, "paths": []})
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        for (k, m, n), output in zip(owners, outputs, strict=True):
            logprobs = output.prompt_logprobs
            steps = [float(logprobs[n + j][t].logprob) for j, t in enumerate(m)]
            out[k]["paths"].append([m, steps])
        return out


def _result(output: Any) -> dict[str, Any]:
    completion = output.outputs[0]
    reason = completion.finish_reason
    return {
        "text": completion.text,
        "input_tokens": len(output.prompt_token_ids or ()),
        "output_tokens": len(completion.token_ids or ()),
        "finish_reason": "length" if reason == "length" else "stop",
    }


def main() -> None:
    out = _protocol_stream()
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            op = command.get("op")
            if op == "load":
                answer = worker.load(command["llm"], command.get("lora"))
            elif op == "generate":
                answer = worker.generate(command["requests"])
            elif op == "close":
                out.write(json.dumps({"ok": True}) + "\n")
                break
            else:
                raise ValueError(f"unknown op {op!r}")
            out.write(json.dumps({"ok": True, **answer}) + "\n")
        except Exception as exc:  # noqa: BLE001 - answer the error, keep serving
            traceback.print_exc()
            out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
    out.flush()


if __name__ == "__main__":  # vLLM starts processes: the engine must run under this guard
    main()
