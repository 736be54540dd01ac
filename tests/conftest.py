"""Shared fixtures. Tests never touch the network: the Hub is forced offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("LAZYLLM_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests name the engine they exercise; the default model's automatic engine choice (vLLM when
# installed) is tested on its own in tests/lazyllm/test_models.py.
os.environ.setdefault("LAZYLLM_DEFAULT_ENGINE", "transformers")

import pytest  # noqa: E402


@pytest.fixture
def ws(tmp_path):
    """A fresh workspace folder."""
    from lazyllm import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture
def counters():
    """The deterministic test engine's in-process counters, reset."""
    from lazyllm.backends import testing

    testing.reset_counters()
    yield testing
    testing.reset_counters()


@pytest.fixture(scope="session")
def model_workspace(tmp_path_factory):
    """One workspace for every test that runs the real embedded model (converted once)."""
    from lazyllm import Workspace

    return Workspace(tmp_path_factory.mktemp("model-ws"))
