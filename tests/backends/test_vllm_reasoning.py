"""Reasoning traces from the real local vLLM server (``vllm serve --reasoning-parser olmo3``).

vLLM's ``deepseek_r1``/``qwen3`` parsers need ``<think>``/``</think>`` as single tokens, which
SmolLM2 lacks; the ``olmo3`` parser matches the tags as text, so it runs on SmolLM2. SmolLM2
does not write a trace on its own: each request here carries a regex (structured outputs,
enforced inside the trace with ``enable_in_reasoning``) that makes it write
``<think>...</think> Answer.``, standing in for a reasoning model's habit. The server splits the
trace into its ``reasoning`` field; the frame keeps the answer in the column and the trace in
``<column>_reasoning``, both cached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

pytest.importorskip("openai", reason="the OpenAI engine needs the openai package: pip install -e '.[openai]'")

import lazyllm  # noqa: E402
from lazyllm.backends.openai_api import OpenAIEngine  # noqa: E402
from lazyllm.models import OpenAI, Transformers  # noqa: E402
from lazyllm.planner import executor  # noqa: E402
from lazyllm.backends.vllm_server import serve  # noqa: E402
from test_openai import _vllm_python  # noqa: E402

pytestmark = pytest.mark.server

#: the shape a reasoning model's answer takes: a trace, then a one-word answer
TRACE_REGEX = r"<think>[A-Za-z ,.]{5,60}</think> [A-Z][a-z]+\."


@pytest.fixture(scope="module")
def reasoning_server(model_workspace) -> Iterator[str]:
    if _vllm_python() is None:
        pytest.skip("vLLM is not installed in .venv-vllm (or $LAZYLLM_VLLM_PYTHON): run bash scripts/install_vllm.sh")
    from lazyllm.core.model_store import resolve_model_dir

    folder = resolve_model_dir(Transformers(), model_workspace.path)
    reasoning = ("--reasoning-parser", "olmo3", "--structured-outputs-config", json.dumps({"enable_in_reasoning": True}))
    with serve(folder, dtype="float32", served_model_name="smollm2", gpu_memory_utilization=0.5, extra_args=reasoning,
               log_path=model_workspace.path / f"vllm-reasoning-server-{os.getpid()}.log", timeout_s=300) as url:
        yield url


def test_the_servers_trace_lands_in_the_reasoning_column_and_the_cache(reasoning_server, tmp_path, monkeypatch):
    bodies: list[dict] = []
    build = OpenAIEngine._body

    def with_regex(self, request, guided):
        endpoint, body, extra = build(self, request, guided)
        extra = {**extra, "structured_outputs": {"regex": TRACE_REGEX}}
        bodies.append(body)
        return endpoint, body, extra

    monkeypatch.setattr(OpenAIEngine, "_body", with_regex)
    frame = lazyllm.from_dicts([{"q": "What is the capital of France? Think first."},
                                {"q": "What color is the sky? Think first."}]).generate(
        "a", OpenAI("smollm2", base_url=reasoning_server), prompt="{{ q }}", max_tokens=48, reasoning="keep")
    result = executor.collect(frame.plan, workspace=tmp_path, progress=False)
    df = result.frames[0]
    assert df["a_error"].to_list() == [None, None]
    for answer, trace in zip(df["a"], df["a_reasoning"]):
        assert trace and "<think>" not in trace and "</think>" not in trace
        assert answer and "think>" not in answer and answer.endswith(".")
    (stats,) = result.stats.values()
    assert 0 < stats.reasoning_tokens < stats.output_tokens  # the server reports 0: estimated by characters
    calls = len(bodies)
    again = frame.collect(workspace=tmp_path, progress=False)
    assert len(bodies) == calls  # answer and trace both from the cache
    assert again["a_reasoning"].to_list() == df["a_reasoning"].to_list()
