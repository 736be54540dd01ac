"""The raw vLLM baseline of the engine benchmarks: plain ``vllm.LLM`` calls, no lazyllm.

Run by the interpreter that has vLLM (``.venv-vllm/bin/python benchmarks/raw_vllm.py
SPEC.json RESULT.json``); it imports only the standard library, jinja2 and vLLM.
``SPEC.json``:

- ``llm``: the keyword arguments of ``vllm.LLM`` (the benchmark passes the same ones
  lazyllm's engine uses);
- ``env``: environment variables to set before vLLM is imported;
- ``mode``: ``"single"``: ``requests`` (lazyllm's worker payloads: ``messages``,
  ``params``), all in one ``LLM.chat`` call; or ``"chain"``: ``rows`` (dicts) and
  ``stages`` (``column``, ``system``, ``prompt`` (Jinja2), ``params``), each stage one
  ``LLM.chat`` over every row, the next stage reading the stripped answers: the
  hand-written sequential script.

``RESULT.json``: ``load_seconds``, and per stage ``seconds``, ``requests``,
``output_tokens``, ``input_tokens``.
"""

from __future__ import annotations

import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402


def _params(p: dict[str, Any]) -> Any:
    from vllm import SamplingParams

    return SamplingParams(n=1, temperature=p["temperature"], top_p=p["top_p"], max_tokens=p["max_tokens"],
                          stop=list(p["stop"]) or None, seed=p.get("seed"))


def _run(llm: Any, messages: list[list[dict[str, str]]], params: list[Any]) -> tuple[dict[str, Any], list[str]]:
    start = time.perf_counter()
    outputs = llm.chat(messages, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    stats = {"seconds": seconds, "requests": len(outputs),
             "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
             "input_tokens": sum(len(o.prompt_token_ids or ()) for o in outputs)}
    return stats, [o.outputs[0].text for o in outputs]


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    os.environ.update(spec.get("env", {}))
    start = time.perf_counter()
    from vllm import LLM

    llm = LLM(**spec["llm"])
    result: dict[str, Any] = {"load_seconds": time.perf_counter() - start, "stages": []}
    if spec["mode"] == "single":
        reqs = spec["requests"]
        stats, _ = _run(llm, [r["messages"] for r in reqs], [_params(r["params"]) for r in reqs])
        result["stages"].append(stats)
    else:
        import jinja2

        rows = [dict(r) for r in spec["rows"]]
        env = jinja2.Environment()
        for stage in spec["stages"]:
            user, system = env.from_string(stage["prompt"]), stage.get("system")
            messages = []
            for row in rows:
                turns = [{"role": "system", "content": env.from_string(system).render(row)}] if system else []
                messages.append(turns + [{"role": "user", "content": user.render(row)}])
            stats, texts = _run(llm, messages, [_params(stage["params"])] * len(rows))
            for row, text in zip(rows, texts):
                row[stage["column"]] = text.strip()
            result["stages"].append(stats)
    result["total_seconds"] = time.perf_counter() - start
    with open(sys.argv[2], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":  # vLLM starts processes: run under this guard
    main()
