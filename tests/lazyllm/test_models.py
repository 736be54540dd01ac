"""The default model's engine choice."""

from __future__ import annotations

import pytest

import lazyllm
from lazyllm.backends import vllm_engine
from lazyllm.errors import PlanError


def test_default_engine_is_vllm_when_installed_else_transformers(monkeypatch):
    monkeypatch.setattr(vllm_engine, "find_vllm_python", lambda explicit=None: None)
    assert isinstance(lazyllm.default_model("auto"), lazyllm.Transformers)
    with pytest.raises(PlanError, match="vLLM is not installed"):
        lazyllm.default_model("vllm")
    monkeypatch.setattr(vllm_engine, "find_vllm_python", lambda explicit=None: "/some/python")
    auto = lazyllm.default_model("auto")
    assert isinstance(auto, lazyllm.VLLM) and auto.model == lazyllm.DEFAULT_MODEL
    assert isinstance(lazyllm.default_model("transformers"), lazyllm.Transformers)
    monkeypatch.setenv("LAZYLLM_DEFAULT_ENGINE", "auto")
    assert isinstance(lazyllm.default_model(), lazyllm.VLLM)
    with pytest.raises(PlanError, match="Unknown default engine 'tgi'"):
        lazyllm.default_model("tgi")


@pytest.mark.server
def test_auto_finds_the_vllm_environment_this_checkout_installs(monkeypatch):
    if vllm_engine.find_vllm_python() is None:
        pytest.skip("vLLM is not installed here (bash scripts/install_vllm.sh)")
    assert isinstance(lazyllm.default_model("auto"), lazyllm.VLLM)


def test_a_vllm_base_trains_with_transformers_on_the_same_weights():
    spec = lazyllm.SFT(base=lazyllm.VLLM(lazyllm.DEFAULT_MODEL), prompt="q", response="a")
    assert isinstance(spec.base, lazyllm.Transformers) and spec.base.model == lazyllm.DEFAULT_MODEL
