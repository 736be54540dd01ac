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
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

pytest.importorskip("openai", reason="the OpenAI engine needs the openai package: pip install -e '.[openai]'")

import lazyllm  # noqa: E402
from lazyllm.backends.openai_api import OpenAIEngine  # noqa: E402
from lazyllm.models import OpenAI, Transformers  # noqa: E402
from lazyllm.planner import executor  # noqa: E402
from test_openai import _stop_group, _vllm_python, free_port  # noqa: E402

pytestmark = pytest.mark.server

#: the shape a reasoning model's answer takes: a trace, then a one-word answer
TRACE_REGEX = r"<think>[A-Za-z ,.]{5,60}</think> [A-Z][a-z]+\."


@pytest.fixture(scope="module")
def reasoning_server(model_workspace) -> Iterator[str]:
    python = _vllm_python()
    if python is None:
        pytest.skip("vLLM is not installed in .venv-vllm (or $LAZYLLM_VLLM_PYTHON): run bash scripts/install_vllm.sh")
    from lazyllm.core.model_store import resolve_model_dir

    folder = resolve_model_dir(Transformers(), model_workspace.path)
    port = free_port()
    log_path = model_workspace.path / f"vllm-reasoning-server-{port}.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.5",
               "--max-model-len", "2048", "--seed", "0", "--no-enable-chunked-prefill",
               "--reasoning-parser", "olmo3", "--structured-outputs-config", json.dumps({"enable_in_reasoning": True})]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start within 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        _stop_group(proc)


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
