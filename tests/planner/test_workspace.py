"""The workspace argument must be a usable folder: checked before any model is loaded."""

from __future__ import annotations

import pytest

import lazyllm
from lazyllm.errors import LazyLLMError, WorkspaceError
from lazyllm.planner.workspace import Workspace, resolve_workspace


def _frame():
    return lazyllm.from_dicts([{"q": "x"}]).generate("a", lazyllm.TestModel(), prompt="{{ q }}")


def test_a_file_is_not_a_workspace(tmp_path, counters):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(WorkspaceError, match="is a file, not a folder") as info:
        _frame().collect(workspace=path, progress=False)
    assert isinstance(info.value, OSError) and isinstance(info.value, LazyLLMError)
    assert "Pass a folder" in str(info.value) and "LAZYLLM_HOME" in str(info.value)
    assert counters.CALLS == 0 and path.read_text() == "hello"


def test_a_folder_that_cannot_be_created(tmp_path, counters):
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkspaceError, match="cannot be created") as info:
        _frame().collect(workspace=tmp_path / "file" / "ws", progress=False)
    assert "is a file" in str(info.value)
    assert counters.CALLS == 0


def test_lazyllm_home_pointing_at_a_file(tmp_path, monkeypatch, counters):
    (tmp_path / "home").write_text("")
    monkeypatch.setenv("LAZYLLM_HOME", str(tmp_path / "home"))
    with pytest.raises(WorkspaceError, match="is a file"):
        _frame().collect(progress=False)
    assert counters.CALLS == 0


def test_a_workspace_that_is_not_a_path(counters):
    with pytest.raises(WorkspaceError, match="must be a folder path"):
        _frame().collect(workspace=42, progress=False)
    assert counters.CALLS == 0


def test_a_missing_folder_is_created_and_an_existing_one_used(tmp_path):
    ws = resolve_workspace(tmp_path / "a" / "b")
    assert not ws.path.exists()  # nothing created by the check
    _frame().collect(workspace=ws, progress=False)
    assert (tmp_path / "a" / "b" / "cache").is_dir()
    assert Workspace(tmp_path / "a" / "b").path == ws.path
