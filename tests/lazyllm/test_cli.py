"""The ``lazyllm`` command line through typer's test runner (deterministic test engine only)."""

from __future__ import annotations

import json
import textwrap
import time

import msgpack
import polars as pl
import pytest
from typer.testing import CliRunner

import lazyllm
from lazyllm.core.protocols import Response
from lazyllm.cli import app

runner = CliRunner()

WORKFLOW = textwrap.dedent('''
    import polars as pl
    import lazyllm

    model = lazyllm.TestModel(name="cli")
    docs = lazyllm.from_dicts([{"id": i, "doc": f"doc {i}"} for i in range(4)])
    answers = docs.generate("answer", model, prompt="Explain: {{ doc }}")
    first_two = answers.filter(pl.col("id") < 2)
    _hidden = docs.head(1)
''')

WITH_MAIN = textwrap.dedent('''
    import sys
    from pathlib import Path
    import lazyllm

    def main():
        marker = Path(sys.argv[1])
        marker.write_text(marker.read_text() + "ran\\n" if marker.exists() else "ran\\n")
        frame = lazyllm.from_dicts([{"q": "x"}]).generate("a", lazyllm.TestModel(name="main"), prompt="{{ q }}")
        return {"result": frame.collect()}

    if __name__ == "__main__":
        main()
''')


def script(tmp_path, text, name="workflow.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_run_collects_every_module_level_frame(tmp_path, ws, counters):
    path = script(tmp_path, WORKFLOW)
    result = invoke("run", path, "--workspace", ws.path, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert "answers: 4 rows × 4 columns (id, doc, answer, answer_error)" in result.output
    assert "first_two: 2 rows × 4 columns" in result.output
    assert "docs: 4 rows × 2 columns" in result.output and "_hidden" not in result.output
    assert counters.CALLS == 4  # first_two shares the answers' subplan: one run
    assert pl.read_parquet(tmp_path / "out" / "answers.parquet").height == 4
    assert len(ws.run_logs()) == 1  # collected in the given workspace


def test_run_calls_main_once_with_arguments(tmp_path, ws):
    path = script(tmp_path, WITH_MAIN)
    marker = tmp_path / "marker.txt"
    result = invoke("run", path, "--workspace", ws.path, "--quiet", marker)
    assert result.exit_code == 0, result.output
    assert marker.read_text() == "ran\n"  # main() ran once: the __main__ block did not run too
    assert "result: 1 rows × 3 columns" in result.output
    assert len(ws.run_logs()) == 1


def test_run_without_frames_or_main_fails(tmp_path):
    result = invoke("run", script(tmp_path, "x = 1\n"))
    assert result.exit_code == 1 and "no main()" in result.output
    assert invoke("run", tmp_path / "missing.py").exit_code == 2


def test_explain_prints_every_plan_and_runs_nothing(tmp_path, ws, counters):
    result = invoke("explain", script(tmp_path, WORKFLOW), "--workspace", ws.path)
    assert result.exit_code == 0, result.output
    for name in ("docs", "answers", "first_two"):
        assert f"== {name} (" in result.output
    assert "GENERATE answer ← test:cli" in result.output and "LLM calls to make: 4" in result.output
    assert counters.CALLS == 0 and ws.run_logs() == []
    logical = invoke("explain", script(tmp_path, WORKFLOW), "--workspace", ws.path, "--logical")
    assert "logical plan" in logical.output


def _age(ws, key: bytes, days: float) -> None:
    cache = ws.cache
    with cache._env.begin(db=cache._db, write=True) as txn:
        record = msgpack.unpackb(txn.get(key))
        record["t"] = time.time() - days * 86_400
        txn.put(key, msgpack.packb(record))


def test_cache_gc_deletes_entries_older_than_the_cutoff(ws):
    ws.cache.put_many([(b"k" * 32, Response(text="old")), (b"n" * 32, Response(text="new"))], model="m")
    _age(ws, b"k" * 32, days=10)
    dry = invoke("cache", "gc", "--older-than", 7, "--workspace", ws.path, "--dry-run")
    assert dry.exit_code == 0 and "would delete 1 of 2" in dry.output and len(ws.cache) == 2
    result = invoke("cache", "gc", "--older-than", 7, "--workspace", ws.path)
    assert result.exit_code == 0 and "deleted 1 of 2 entries older than 7 days" in result.output
    assert ws.cache.get(b"k" * 32) is None and ws.cache.get(b"n" * 32).text == "new"
    assert "deleted 0 of 1" in invoke("cache", "gc", "--older-than", 7, "--workspace", ws.path).output
    assert invoke("cache", "gc", "--workspace", ws.path).exit_code != 0  # --older-than is required


def test_cache_stats_and_clear(tmp_path, ws):
    assert json.loads(invoke("cache", "stats", "--workspace", ws.path).output)["entries"] == 0
    lazyllm.from_dicts([{"q": "x"}]).generate("a", lazyllm.TestModel(), prompt="{{ q }}").collect(workspace=ws)
    assert json.loads(invoke("cache", "stats", "--workspace", ws.path).output)["entries"] == 1
    assert "deleted 1 entries" in invoke("cache", "clear", "--workspace", ws.path, "--yes").output
    assert len(ws.cache) == 0


def test_card_of_a_workspace_and_of_a_dataset(tmp_path, ws):
    frame = lazyllm.from_dicts([{"q": "x"}, {"q": "y"}]).generate("a", lazyllm.TestModel(), prompt="{{ q }}")
    frame.collect(workspace=ws)
    frame.collect(workspace=ws)
    summary = invoke("card", ws.path)
    assert summary.exit_code == 0, summary.output
    assert "2 run log(s)" in summary.output and f"#{frame.fingerprint[:12]} (2 rows)" in summary.output
    assert "2 LLM calls · 0 cache hits" in summary.output and "0 LLM calls · 2 cache hits" in summary.output
    as_json = json.loads(invoke("card", ws.path, "--json").output)
    assert [s["calls"] for s in as_json] == [2, 0]

    out = frame.save_dataset(tmp_path / "ds", workspace=ws, title="Tiny set")
    shown = invoke("card", out)
    assert shown.exit_code == 0 and shown.output.startswith("---\n") and "# Tiny set" in shown.output
    assert json.loads(invoke("card", out / "lazyllm_card.json", "--json").output)["fingerprint"]["logical"] == (
        frame.fingerprint)
    bad = invoke("card", tmp_path)
    assert bad.exit_code == 2 and "neither a workspace" in bad.output


def test_demo_writes_the_outputs_and_their_cards(tmp_path, ws, monkeypatch):
    from lazyllm.examples import docs_to_qa

    build = docs_to_qa.build
    model = lazyllm.TestModel(name="demo", rules=(("[User Question]", "A"), ("Assistant's Answer]", "9")))
    monkeypatch.setattr(docs_to_qa, "build", lambda *a, **k: build(*a, **{**k, "model": model}))
    out = tmp_path / "lazyllm_output"
    result = invoke("demo", "--limit", 3, "--out", out, "--workspace", ws.path, "--quiet")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out / "qa.parquet").height == 3
    for name in ("kept", "preferences"):  # dataset folders with a data card
        assert (out / name / "README.md").is_file() and list((out / name / "data").glob("*.parquet"))
    assert "DuckDB summary of the kept data" in result.output


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["explain", "--help"], ["cache", "gc", "--help"],
                                     ["card", "--help"], ["demo", "--help"]])
def test_help(command):
    result = invoke(*command)
    assert result.exit_code == 0 and "Usage" in result.output


def test_cache_verify_and_repair_of_a_damaged_cache(tmp_path, counters, damage_cache):
    from lazyllm.errors import CacheError

    ws = tmp_path / "ws"
    frame = lazyllm.from_dicts([{"q": f"question {i} " + "x" * 200} for i in range(300)]).generate(
        "a", lazyllm.TestModel(), prompt="{{ q }}")
    frame.collect(workspace=ws, progress=False)
    assert counters.CALLS == 300
    assert invoke("cache", "verify", "--workspace", ws).exit_code == 0
    damage_cache(ws / "cache")
    with pytest.raises(CacheError, match="lazyllm cache repair"):
        frame.collect(workspace=ws, progress=False)
    verify = invoke("cache", "verify", "--workspace", ws)
    assert verify.exit_code == 1 and "lazyllm cache repair" in verify.output
    repair = invoke("cache", "repair", "--workspace", ws, "--yes")
    assert repair.exit_code == 0, repair.output
    lost = json.loads(repair.output[: repair.output.rindex("}") + 1])["lost"]
    assert 0 < lost < 300 and f"lost {lost}" in repair.output
    assert invoke("cache", "verify", "--workspace", ws).exit_code == 0
    counters.reset_counters()
    assert frame.collect(workspace=ws, progress=False)["a_error"].null_count() == 300
    assert counters.CALLS == lost  # only the lost entries are recomputed
