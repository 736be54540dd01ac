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


@pytest.fixture
def damage_cache():
    """A function that overwrites one live B-tree leaf page in the middle of an LMDB cache's data.mdb."""
    import shutil

    import lmdb

    from lazyllm.planner.cache import _close_env

    page_size = 4096

    def damage(path) -> None:
        _close_env(path)  # this process's handle would keep the old pages mapped
        compact = path.with_name(path.name + ".compact")
        compact.mkdir()
        env = lmdb.open(str(path), max_dbs=4)
        env.copy(str(compact), compact=True)  # no free pages left: every leaf page is live
        env.close()
        shutil.move(compact / "data.mdb", path / "data.mdb")
        compact.rmdir()
        data = bytearray((path / "data.mdb").read_bytes())
        leaves = [p for p in range(2, len(data) // page_size)
                  if int.from_bytes(data[p * page_size + 10:p * page_size + 12], "little") == 0x02]  # P_LEAF
        page = leaves[len(leaves) // 2]
        data[page * page_size:(page + 1) * page_size] = b"\xab" * page_size
        (path / "data.mdb").write_bytes(bytes(data))

    return damage
