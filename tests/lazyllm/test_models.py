"""The default model: one identity on every machine, an engine that follows the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lazyllm
from lazyllm.backends import hardware, vllm_engine
from lazyllm.errors import MissingDependencyError, PlanError
from lazyllm.planner.executor import model_fingerprint

AVX2_ONLY = hardware.Machine(cpu_model="AMD EPYC 7B13", vendor="AuthenticAMD", flags=frozenset({"avx2"}), cores=2)


def test_default_model_is_float32_transformers_weights_whatever_the_engine(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_engine, "find_vllm_python", lambda explicit=None: None)
    monkeypatch.setattr(hardware, "detect_machine", lambda: AVX2_ONLY)
    auto = lazyllm.default_model("auto", workspace=tmp_path)
    assert isinstance(auto, lazyllm.Transformers) and auto.dtype == "float32" and auto.engine == "transformers"
    with pytest.raises(MissingDependencyError, match="install_vllm.sh"):
        lazyllm.default_model("vllm")
    monkeypatch.setattr(vllm_engine, "find_vllm_python", lambda explicit=None: "/some/python")
    pinned = lazyllm.default_model("vllm")
    assert pinned.engine == "vllm" and pinned.dtype == "float32"
    assert isinstance(pinned.runtime_spec(), lazyllm.VLLM) and pinned.runtime_spec().dtype == "float32"
    # the engine is a performance setting: one fingerprint, one cache
    assert model_fingerprint(pinned) == model_fingerprint(auto) == model_fingerprint(lazyllm.default_model("transformers"))
    # so is the batch size: transformers decodes 64 rows together, vLLM keeps its own default
    assert auto.batch_size == lazyllm.models.DEFAULT_BATCH_SIZE == 64 and pinned.batch_size != 64
    assert model_fingerprint(auto) == model_fingerprint(lazyllm.Transformers(lazyllm.DEFAULT_MODEL, batch_size=8))
    # vLLM installed but not measured on this CPU: transformers
    assert lazyllm.default_model("auto", workspace=tmp_path).engine == "transformers"
    with pytest.raises(PlanError, match="Unknown default engine 'tgi'"):
        lazyllm.default_model("tgi")


def test_a_measurement_kept_in_the_workspace_picks_the_engine(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_engine, "find_vllm_python", lambda explicit=None: "/some/python")
    monkeypatch.setattr(hardware, "detect_machine", lambda: AVX2_ONLY)
    monkeypatch.setattr(hardware, "detect_machine_key", lambda: AVX2_ONLY.key)
    monkeypatch.setattr(hardware, "_KEY_CACHE", {})
    hardware.write_measurement(tmp_path, {"transformers": 200.0, "vllm": 100.0}, {})
    monkeypatch.setenv("LAZYLLM_DEFAULT_ENGINE", "auto")
    assert lazyllm.default_model(workspace=tmp_path).engine == "vllm"
    hardware.write_measurement(tmp_path, {"transformers": 200.0, "vllm": 900.0}, {})
    assert lazyllm.default_model(workspace=tmp_path).engine == "transformers"


def test_engine_vllm_refuses_what_vllm_cannot_run():
    with pytest.raises(PlanError, match="engine must be"):
        lazyllm.Transformers(engine="tgi")
    with pytest.raises(PlanError, match="chat_template"):
        lazyllm.Transformers(engine="vllm", chat_template=False)


def test_doctor_reports_the_machine_and_the_choice(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lazyllm", "doctor", "--json", "--workspace", str(tmp_path)],
                         capture_output=True, text=True, check=True, env={**os.environ, "LAZYLLM_DEFAULT_ENGINE": ""})
    report = json.loads(out.stdout)
    assert report["machine"]["cores"] >= 1 and "avx512_bf16" in report["machine"]["flags"]
    assert report["choice"]["dtype"] == "float32" and report["choice"]["engine"] in ("transformers", "vllm")
    assert report["choice"]["reasons"]
    text = subprocess.run([sys.executable, "-m", "lazyllm", "doctor", "--workspace", str(tmp_path)],
                          capture_output=True, text=True, check=True).stdout
    assert "native bfloat16" in text and "default      smollm2-135m-instruct" in text


def test_a_vllm_base_trains_with_transformers_on_the_same_weights():
    spec = lazyllm.SFT(base=lazyllm.VLLM(lazyllm.DEFAULT_MODEL), prompt="q", response="a")
    assert isinstance(spec.base, lazyllm.Transformers) and spec.base.model == lazyllm.DEFAULT_MODEL


_SCRIPT = """
import json, sys
import polars as pl
import lazyllm
model = lazyllm.default_model()
frame = lazyllm.from_polars(pl.DataFrame({"topic": ["rivers", "tea"]})).generate(
    "line", model, prompt="One short sentence about {{ topic }}.", max_tokens=8)
df = frame.collect(workspace=sys.argv[1], progress=False)
print(json.dumps({"engine": model.engine, "rows": df["line"].to_list()}))
"""


@pytest.mark.model
@pytest.mark.server
def test_two_machines_choosing_different_engines_share_one_workspace_with_zero_calls(tmp_path, model_workspace):
    """Process A runs the default model on transformers, process B (another machine's choice,
    vLLM) reads the same workspace: B sends no request and loads no model."""
    if vllm_engine.find_vllm_python() is None:
        pytest.skip("vLLM is not installed here (bash scripts/install_vllm.sh)")
    ws = tmp_path / "shared-ws"
    ws.mkdir()
    (model_workspace.path / "models").mkdir(parents=True, exist_ok=True)
    (ws / "models").symlink_to(model_workspace.path / "models", target_is_directory=True)  # converted once
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    runs = {}
    for engine in ("transformers", "vllm"):
        env = {**os.environ, "LAZYLLM_DEFAULT_ENGINE": engine}
        out = subprocess.run([sys.executable, str(script), str(ws)], capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        runs[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        logs = sorted((ws / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
        runs[engine]["calls"] = sum(n["calls"] for n in json.loads(logs[-1].read_text())["nodes"])
    assert runs["transformers"]["engine"] == "transformers" and runs["vllm"]["engine"] == "vllm"
    assert runs["transformers"]["calls"] == 2 and runs["vllm"]["calls"] == 0
    assert runs["vllm"]["rows"] == runs["transformers"]["rows"]
