"""VLLMEngine: vllm.LLM in a worker process of .venv-vllm, on the real SmolLM2 model (CPU).

Tests marked ``server`` start vLLM (about 30 s per load with enforce_eager on 2 cores)
and skip when no interpreter has vLLM (install it with ``bash scripts/install_vllm.sh``).
One engine is shared by the module; the frame test loads its own, to see that the
executor releases it after the collect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import ask, run

import lazyllm
from lazyllm.backends import registry, vllm_engine
from lazyllm.core.errors import LazyLLMError, MissingDependencyError, PlanError
from lazyllm.core.protocols import Engine, Message, Request, SamplingParams
from lazyllm.backends.hardware import Machine
from lazyllm.backends.vllm_engine import VLLMEngine, find_vllm_python, resolve_settings
from lazyllm.models import VLLM
from lazyllm.planner.executor import model_fingerprint

FRANCE = "What is the capital of France?"
COLORS = "Name three colors."
ESSAY = "Write a long essay about the history of the Roman Empire."


def _require_vllm() -> None:
    if find_vllm_python() is None:
        pytest.skip("vLLM is not installed in .venv-vllm (or $LAZYLLM_VLLM_PYTHON): run bash scripts/install_vllm.sh")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z" if Path(f"/proc/{pid}").exists() else False


@pytest.fixture(scope="module")
def engine(model_workspace):
    _require_vllm()
    eng = VLLMEngine(VLLM(dtype="float32", max_model_len=2048, batch_size=64), workspace=model_workspace.path)
    yield eng
    eng.close()


# --------------------------------------------------------------------------- no vLLM needed


def test_registry_and_construction_start_nothing(tmp_path):
    assert registry.engine_factory("vllm") is VLLMEngine
    eng = VLLMEngine(VLLM(), workspace=tmp_path)
    assert isinstance(eng, Engine) and not eng.loaded
    assert list(eng.generate([])) == []
    assert not eng.loaded
    eng.close()


def test_spec_identity_keeps_what_changes_outputs(tmp_path):
    base = VLLM()
    assert model_fingerprint(base) == model_fingerprint(
        VLLM(batch_size=8, enforce_eager=False, gpu_memory_utilization=0.9, tensor_parallel_size=2, max_model_len=512))
    assert model_fingerprint(VLLM(dtype="float32")) != model_fingerprint(base)
    assert model_fingerprint(VLLM(quantization="fp8")) != model_fingerprint(base)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with_lora = VLLM(lora_path=str(adapter))
    assert model_fingerprint(with_lora) != model_fingerprint(base)
    assert str(tmp_path) not in json.dumps(with_lora.identity())  # content, not this machine's path
    with pytest.raises(PlanError, match="not a folder"):
        VLLM(lora_path=str(tmp_path / "missing"))
    with pytest.raises(PlanError, match="gpu_memory_utilization"):
        VLLM(gpu_memory_utilization=1.5)


def test_llm_options_on_cpu(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    spec = VLLM(dtype="float32", max_model_len=1024, quantization="fp8", lora_path=str(adapter), device="cpu")
    kwargs = VLLMEngine(spec, workspace=tmp_path).llm_kwargs("/models/x")
    assert kwargs["enable_chunked_prefill"] is False and kwargs["max_num_batched_tokens"] >= 1024
    assert kwargs["enable_lora"] is True and kwargs["quantization"] == "fp8" and kwargs["dtype"] == "float32"


CPU = Machine(cpu_model="AMD EPYC 7B13", vendor="AuthenticAMD", flags=frozenset({"avx2", "fma"}), cores=2)
SMOLLM2 = {"num_attention_heads": 9, "num_key_value_heads": 3}  # SmolLM2-135M's config.json


def _gpus(n: int, name: str = "NVIDIA H100 80GB HBM3") -> Machine:
    return Machine(cpu_model="Intel Xeon Platinum 8480+", vendor="GenuineIntel",
                   flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), cores=64,
                   cuda=tuple((name, (9, 0)) for _ in range(n)))


def test_auto_settings_on_a_cpu():
    s = resolve_settings(VLLM(), CPU, SMOLLM2)
    assert (s.on_cpu, s.enforce_eager, s.tensor_parallel_size, s.kv_cache_space_gib) == (True, True, 1, 1)
    assert s.gpu_memory_utilization == 0.5 and s.enable_prefix_caching is True
    assert any("enforce_eager=True" in n for n in s.notes)


@pytest.mark.parametrize(("gpus", "config", "tp"), [
    (1, SMOLLM2, 1),
    (2, {"num_attention_heads": 32, "num_key_value_heads": 8}, 2),
    (8, {"num_attention_heads": 32, "num_key_value_heads": 8}, 8),
    (4, SMOLLM2, 3),  # 9 heads: the largest size <= 4 that divides them (3 KV heads, one per GPU)
    (8, {"num_attention_heads": 14, "num_key_value_heads": 2}, 2),  # 7 divides the heads, not the 2 KV heads
    (6, None, 4),  # no config: a power of two
])
def test_auto_settings_on_gpu_sets(gpus, config, tp):
    s = resolve_settings(VLLM(), _gpus(gpus), config)
    assert (s.on_cpu, s.enforce_eager, s.tensor_parallel_size) == (False, False, tp)
    assert s.gpu_memory_utilization == 0.9 and s.enable_prefix_caching is True


def test_explicit_settings_win_and_keep_the_fingerprint():
    spec = VLLM(tensor_parallel_size=2, enforce_eager=True, gpu_memory_utilization=0.6, enable_prefix_caching=False)
    s = resolve_settings(spec, _gpus(8), SMOLLM2)
    assert (s.tensor_parallel_size, s.enforce_eager, s.gpu_memory_utilization, s.enable_prefix_caching) == \
        (2, True, 0.6, False)
    assert s.notes == ("kv_cache_space_gib=1 (unused on GPU)",)
    assert model_fingerprint(spec) == model_fingerprint(VLLM())
    assert resolve_settings(VLLM(device="cpu"), _gpus(2)).on_cpu  # device pins CPU settings
    for bad in ({"enforce_eager": "yes"}, {"tensor_parallel_size": 0}, {"gpu_memory_utilization": "max"},
                {"enable_prefix_caching": 1}, {"kv_cache_space_gib": "auto-ish"}):
        with pytest.raises(PlanError, match=next(iter(bad))):
            VLLM(**bad)


def test_llm_kwargs_use_the_resolved_settings(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"num_attention_heads": 32, "num_key_value_heads": 8}))
    eng = VLLMEngine(VLLM(), workspace=tmp_path)
    eng._machine = _gpus(4)
    kwargs = eng.llm_kwargs(str(tmp_path / "m"))
    assert (kwargs["tensor_parallel_size"], kwargs["enforce_eager"], kwargs["gpu_memory_utilization"]) == (4, False, 0.9)
    assert kwargs["enable_prefix_caching"] is True and "enable_chunked_prefill" not in kwargs


def test_bfloat16_on_a_cpu_without_native_bfloat16_warns(tmp_path, caplog):
    eng = VLLMEngine(VLLM(dtype="bfloat16"), workspace=tmp_path)
    eng._machine = CPU
    with caplog.at_level("WARNING", logger="lazyllm"):
        eng._warn_bf16()
    assert "without native bfloat16" in caplog.text and "dtype='float32'" in caplog.text
    caplog.clear()
    native = VLLMEngine(VLLM(dtype="bfloat16"), workspace=tmp_path)
    native._machine = Machine(cpu_model="Xeon", vendor="GenuineIntel", flags=frozenset({"amx_bf16"}), cores=4)
    with caplog.at_level("WARNING", logger="lazyllm"):
        native._warn_bf16()
        fp32 = VLLMEngine(VLLM(dtype="float32"), workspace=tmp_path)
        fp32._machine = CPU
        fp32._warn_bf16()
    assert caplog.text == ""


def test_missing_vllm_names_the_install_script(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_engine, "find_vllm_python", lambda explicit=None: None)
    with pytest.raises(MissingDependencyError, match="install_vllm.sh") as info:
        next(iter(VLLMEngine(VLLM(), workspace=tmp_path).generate([ask(FRANCE)])))
    assert isinstance(info.value, LazyLLMError)


# --------------------------------------------------------------------------- real vLLM


@pytest.mark.server
def test_greedy_answers_and_token_counts(engine):
    out = run(engine, [ask(FRANCE, max_tokens=24), ask(COLORS, max_tokens=24), ask(ESSAY, max_tokens=5),
                       Request(prompt="The capital of France is", params=SamplingParams(max_tokens=8))])
    assert "Paris" in out[0].text
    for response in out.values():
        assert response.error is None and response.text and response.text == response.text.strip()
    assert 30 < out[0].input_tokens < 60 and out[3].input_tokens < 10  # chat template vs raw prompt
    assert (out[2].output_tokens, out[2].finish_reason) == (5, "length")
    assert run(engine, [ask(FRANCE, max_tokens=24)])[0] == out[0]


@pytest.mark.server
def test_seeded_samples_do_not_depend_on_the_batch(engine):
    sampled = ask(FRANCE, temperature=0.8, seed=11, max_tokens=16)
    alone = run(engine, [sampled])[0]
    batch = [ask(f"Tell me about the number {k}.", temperature=0.9, seed=k, max_tokens=16) for k in range(40)]
    mixed = run(engine, [*batch, sampled])
    assert mixed[len(batch)] == alone
    other_sample = Request(messages=sampled.messages, params=sampled.params, sample_index=1)
    assert run(engine, [other_sample])[0].text != alone.text


@pytest.mark.server
def test_responses_stream_as_they_finish(engine):
    """A long answer does not hold back short ones: they come back in earlier parts."""
    requests = [ask(ESSAY, max_tokens=160)] + [ask(f"Say the number {k}.", max_tokens=4) for k in range(6)]
    parts = [list(part) for part in engine.generate(requests)]
    order = [i for part in parts for i, _ in part]
    assert sorted(order) == list(range(7)) and len(parts) >= 2
    assert order[-1] == 0 and 0 not in [i for i, _ in parts[0]]
    long = next(r for part in parts for i, r in part if i == 0)
    assert long.output_tokens > 4 and long.error is None


@pytest.mark.server
def test_a_session_takes_requests_while_vllm_runs(engine):
    """Requests submitted while a long answer decodes join vLLM's running batch and finish first;
    greedy answers are the ones generate() gives."""
    session = engine.session()
    assert session.continuous and session.capacity == 64
    essay = session.submit([ask(ESSAY, max_tokens=160)])[0]
    short = session.submit([ask(f"Say the number {k}.", max_tokens=4) for k in range(2)])
    got: dict[int, Any] = {}
    while not all(t in got for t in short):
        got.update(session.poll())
    assert essay not in got
    france = session.submit([ask(FRANCE, max_tokens=24)])[0]  # joins while the essay decodes
    while france not in got:
        got.update(session.poll(timeout=60))
    assert essay not in got
    while essay not in got:
        got.update(session.poll(timeout=60))
    assert session.poll(timeout=0) == []
    assert got[essay].output_tokens > 24 and got[essay].error is None
    assert got[france] == run(engine, [ask(FRANCE, max_tokens=24)])[0]
    session.close()


@pytest.mark.server
def test_a_given_up_call_does_not_leak_into_the_next(engine):
    gen = engine.generate([ask(ESSAY, max_tokens=64), ask(COLORS, max_tokens=64)])
    next(gen)
    gen.close()  # the caller gives up: the rest is aborted, its answers (if any) ignored
    out = run(engine, [ask(FRANCE, max_tokens=24)])
    assert list(out) == [0] and "Paris" in out[0].text


@pytest.mark.server
def test_stop_strings_and_constraints(engine):
    full = run(engine, [ask(ESSAY, max_tokens=24)])[0]
    stop = full.text.split()[4]
    schema = json.dumps({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                         "required": ["name", "age"]})
    out = run(engine, [
        ask(ESSAY, max_tokens=24, stop=(stop,)),
        Request(messages=(Message("user", "Is the sky blue?"),), choices=("yes", "no"),
                params=SamplingParams(max_tokens=4)),
        Request(messages=(Message("user", "Describe a person as JSON."),), json_schema=schema,
                params=SamplingParams(max_tokens=48)),
    ])
    assert out[0].text == full.text[: full.text.find(stop)].strip() and out[0].finish_reason == "stop"
    assert out[1].text in ("yes", "no")
    person = json.loads(out[2].text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


@pytest.mark.server
def test_a_frame_runs_on_vllm_and_the_engine_is_released_after_the_collect(model_workspace, monkeypatch):
    _require_vllm()
    engines: list[VLLMEngine] = []

    def factory(spec, *, workspace):
        engines.append(VLLMEngine(spec, workspace=workspace))
        return engines[-1]

    monkeypatch.setitem(registry._RUNTIME, "vllm", factory)
    spec = VLLM(dtype="float32", max_model_len=2048)
    frame = (lazyllm.from_dicts([{"q": FRANCE}, {"q": "Is water wet?"}])
             .generate("answer", spec, prompt="{{ q }}", max_tokens=16)
             .generate("label", spec, prompt="{{ q }} Answer yes or no.", choices=["yes", "no"], max_tokens=4))
    out = frame.collect(workspace=model_workspace)
    assert "Paris" in out["answer"][0] and set(out["label"].to_list()) <= {"yes", "no"}
    assert len(engines) == 1 and not engines[0].loaded  # closed by the executor: memory released
    assert engines[0].log_path is not None and engines[0].log_path.exists()


@pytest.mark.server
def test_choice_logprobs_match_the_transformers_engine(engine, model_workspace):
    """Request(logprobs=True) on vLLM: the same distribution over the scores 1-10 (two-digit "10"
    included) and over MT-Bench's verdict letters as the transformers engine, up to rounding."""
    import math

    from lazyllm.backends.transformers import TransformersEngine
    from lazyllm.models import Transformers

    scores = tuple(str(s) for s in range(1, 11))
    requests = [
        Request(messages=(Message("system", "Rate the answer from 1 to 10."), Message("user", "2+2?\nAnswer: 4")),
                choices=scores, logprobs=True),
        Request(messages=(Message("user", "Which is better, A or B? A: Paris. B: Bananas."),),
                choices=("A", "B", "C"), logprobs=True),
    ]
    served = run(engine, requests)
    with TransformersEngine(Transformers(dtype="float32"), workspace=model_workspace.path) as local:
        offline = run(local, requests)
    for k in range(len(requests)):
        a, b = served[k], offline[k]
        assert a.error is None and len(a.choice_logprobs) == len(requests[k].choices)
        pa = [math.exp(v) for v in a.choice_logprobs]
        pb = [math.exp(v) for v in b.choice_logprobs]
        assert pa == pytest.approx(pb, abs=0.01) and a.input_tokens == b.input_tokens
