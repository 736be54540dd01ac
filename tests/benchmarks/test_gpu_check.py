"""benchmarks/gpu_check.py imports and, without a CUDA GPU, skips cleanly (exit 0, JSON saying so);
the engine benchmarks are registered and their prompts vary."""

from __future__ import annotations

import json

import pytest


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path, monkeypatch, capsys):
    from benchmarks import gpu_check

    monkeypatch.setattr(gpu_check, "_cuda", lambda: False)  # also on a machine that has one
    report = gpu_check.main(["--out", str(tmp_path)])
    assert report["skipped"].startswith("no CUDA GPU") and report["parts"] == {}
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["skipped"] == report["skipped"] and "cores" in saved["machine"]
    assert "skipped: no CUDA GPU" in capsys.readouterr().out


def test_gpu_check_skips_parts_the_budget_cannot_hold(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    monkeypatch.setattr(gpu_check, "_cuda", lambda: True)
    monkeypatch.setattr(gpu_check, "_vllm_available", lambda: False)
    report = gpu_check.main(["--out", str(tmp_path), "--budget", "10"])
    assert set(report["parts"]) == {"transformers", "lora_sft", "vllm"}
    assert all("skipped" in part for part in report["parts"].values())


def test_engine_benchmarks_are_registered_with_varied_prompts():
    from benchmarks import engines_raw, run

    assert {"vllm-raw", "chain", "openai-raw"} <= set(run.BENCHES)
    ps = engines_raw.prompts(12)
    assert len(set(ps)) == 12 and len({p.split(" about ")[0] for p in ps}) == len(engines_raw.STYLES)
    with pytest.raises(SystemExit):
        run.main(["vllm-raw", "--prompts", "x"])  # argparse: a bad size fails before anything runs
