"""The Ray executor on a real local Ray cluster (2 CPUs, 2 replicas)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import polars as pl
import pytest

import lazyllm
from lazyllm.core.errors import PlanError

ray = pytest.importorskip("ray", reason="the Ray executor needs the 'ray' extra")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (start-up costs seconds)."""
    executor = lazyllm.RayExecutor(replicas=2, num_cpus=2)
    executor.connect()
    yield executor
    ray.shutdown()


def _log(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _workflow(model: lazyllm.TestModel, n: int = 40) -> lazyllm.Frame:
    rows = [{"id": i, "topic": f"topic {i % 30}"} for i in range(n)]  # 10 duplicated topics
    return (
        lazyllm.from_dicts(rows)
        .generate("question", model, prompt="Ask about {{ topic }}")
        .generate("answer", model, prompt="Answer: {{ question }}")
        .filter(pl.col("id") % 4 != 3)
    )


def test_ray_equals_local_row_for_row_without_duplicate_requests(cluster, tmp_path):
    local_model = lazyllm.TestModel(batch_size=4, log_path=str(tmp_path / "local.jsonl"))
    ray_model = lazyllm.TestModel(batch_size=4, log_path=str(tmp_path / "ray.jsonl"))
    local = _workflow(local_model).collect(workspace=tmp_path / "a", progress=False)
    distributed = _workflow(ray_model).collect(workspace=tmp_path / "b", progress=False, executor=cluster)
    assert distributed.equals(local)
    batches = _log(tmp_path / "ray.jsonl")
    keys = [k for b in batches for k in b["keys"]]
    assert len(keys) == len(set(keys)), "a request ran twice"
    assert sorted(keys) == sorted(k for b in _log(tmp_path / "local.jsonl") for k in b["keys"])
    assert len({b["pid"] for b in batches}) == 2, "both replicas should have worked"
    assert os.getpid() not in {b["pid"] for b in batches}
    # a rerun is served from the driver's cache: no replica is even asked
    again = _workflow(ray_model).collect(workspace=tmp_path / "b", progress=False, executor=cluster)
    assert again.equals(local) and len(_log(tmp_path / "ray.jsonl")) == len(batches)


def test_run_result_reports_per_replica_stats(cluster, tmp_path):
    from lazyllm.planner import executor

    model = lazyllm.TestModel(batch_size=4)
    result = executor.collect(_workflow(model, n=16).plan, workspace=tmp_path / "ws", progress=False,
                              executor=cluster)
    recs = result.replicas
    assert [r["replica"] for r in recs] == [0, 1]
    assert sum(r["requests"] for r in recs) == sum(s.calls for s in result.stats.values())
    assert all(r["batches"] >= 1 and r["deaths"] == 0 for r in recs)
    log = json.loads(result.log_path.read_text())
    assert log["replicas"] == recs


def test_poison_rows_end_as_error_rows_not_a_failed_job(cluster, tmp_path):
    model = lazyllm.TestModel(batch_size=4, raise_on=("RAISE",), exit_on=("CRASH",),
                              log_path=str(tmp_path / "calls.jsonl"))
    rows = [{"id": i, "topic": "RAISE" if i == 5 else "CRASH" if i == 11 else f"t{i}"} for i in range(16)]
    out = (lazyllm.from_dicts(rows).generate("y", model, prompt="{{ topic }}")
           .collect(workspace=tmp_path / "ws", progress=False,
                    executor=lazyllm.RayExecutor(replicas=2, max_batch_retries=1)))
    assert out.height == 16
    errors = dict(zip(out["id"], out["y_error"]))
    assert "raised" in errors[5] and "RuntimeError" in errors[5]
    assert "died" in errors[11]
    assert all(errors[i] is None for i in range(16) if i not in (5, 11))
    assert out.filter(pl.col("id") == 3)["y"].item() == "echo[0|greedy]: t3"
    assert out.filter(pl.col("id").is_in([5, 11]))["y"].to_list() == [None, None]


def test_killed_replica_is_replaced_and_every_row_completes(cluster, tmp_path):
    log = tmp_path / "calls.jsonl"
    model = lazyllm.TestModel(batch_size=2, delay=0.3, log_path=str(log))
    frame = lazyllm.from_dicts([{"i": i} for i in range(24)]).generate("y", model, prompt="item {{ i }}")
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            batches = _log(log)
            if len(batches) >= 2:
                killed.append(batches[-1]["pid"])
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    from lazyllm.planner import executor

    result = executor.collect(frame.plan, workspace=tmp_path / "ws", progress=False, executor=cluster)
    thread.join()
    assert killed, "no replica was killed"
    out = result.frames[0]
    assert out["y"].to_list() == [f"echo[0|greedy]: item {i}" for i in range(24)]
    assert out["y_error"].null_count() == 24
    assert sum(r["deaths"] for r in result.replicas) == 1
    assert len({b["pid"] for b in _log(log)}) >= 3  # a new process took over


DRIVER = textwrap.dedent(
    """
    import sys, lazyllm
    ws, log = sys.argv[1], sys.argv[2]
    frame = lazyllm.from_dicts([{"i": i} for i in range(30)]).generate(
        "y", lazyllm.TestModel(batch_size=2, delay=0.3, log_path=log), prompt="item {{ i }}")
    frame.collect(workspace=ws, progress=False, executor=lazyllm.RayExecutor(replicas=2, num_cpus=2))
    """
)


def test_killed_driver_resumes_from_the_cache_on_one_machine(tmp_path):
    ws, log = str(tmp_path / "ws"), str(tmp_path / "calls.jsonl")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, ws, log], start_new_session=True)
    deadline = time.time() + 180
    while sum(b["n"] for b in _log(log)) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
    proc.wait()
    done = {k for b in _log(log) for k in b["keys"]}
    assert 8 <= len(done) < 30, "the driver should have been killed mid-run"
    rerun_log = str(tmp_path / "rerun.jsonl")
    frame = lazyllm.from_dicts([{"i": i} for i in range(30)]).generate(
        "y", lazyllm.TestModel(batch_size=2, log_path=rerun_log), prompt="item {{ i }}")
    out = frame.collect(workspace=ws, progress=False)  # the single-process executor finishes it
    assert out["y"].to_list() == [f"echo[0|greedy]: item {i}" for i in range(30)]
    recomputed = {k for b in _log(rerun_log) for k in b["keys"]}
    # only batches a replica had finished but the driver had not committed yet (at most one
    # per replica: 2 x 2 requests) may run again; everything committed is served from the cache
    assert len(recomputed) <= 30 - len(done) + 4
    assert len(recomputed) < 30


def test_sink_parquet_reads_partitions_on_the_cluster(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for f in range(3):
        pl.DataFrame({"id": list(range(f * 10, f * 10 + 10))}).write_parquet(src / f"f{f}.parquet")
    model = lazyllm.TestModel(batch_size=4)
    frame = (lazyllm.read_parquet(str(src / "*.parquet"))
             .generate("y", model, prompt="row {{ id }}")
             .filter(pl.col("id") % 3 != 0))
    shards = frame.sink_parquet(tmp_path / "out", rows_per_shard=7, workspace=tmp_path / "ws",
                                progress=False, executor=cluster)
    assert [p.name for p in shards][:2] == ["part-00000.parquet", "part-00001.parquet"]
    assert all(pl.read_parquet(p).height <= 7 for p in shards)
    got = pl.concat([pl.read_parquet(p) for p in shards])
    assert got.equals(frame.collect(workspace=tmp_path / "ws", progress=False))


def test_bad_executor_and_unpartitionable_plans_fail_before_any_work(tmp_path):
    frame = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
    with pytest.raises(PlanError, match="Unknown executor 'dask'"):
        frame.collect(workspace=tmp_path / "ws", executor="dask")
    with pytest.raises(PlanError, match="replicas"):
        lazyllm.RayExecutor(replicas=0)
    with pytest.raises(PlanError, match="Sort needs every row"):
        frame.sort("y").sink_parquet(tmp_path / "out", workspace=tmp_path / "ws")
    assert not (tmp_path / "out").exists()


@pytest.mark.model
def test_main_job_plan_on_ray_equals_single_process(cluster, model_workspace, tmp_path):
    """The main job's question/answer/judge plan on the real default model, 2 replicas."""
    from lazyllm.examples import docs_to_qa

    model = lazyllm.Transformers(lazyllm.DEFAULT_MODEL, batch_size=2, num_threads=1)

    def plan() -> lazyllm.Frame:
        return docs_to_qa.build(limit=4, model=model, question_tokens=16, answer_tokens=24).kept

    local_ws = lazyllm.Workspace(tmp_path / "local-ws")
    remote_ws = lazyllm.Workspace(tmp_path / "ray-ws")
    for w in (local_ws, remote_ws):  # share the converted model, not the cache
        w.path.mkdir(parents=True)
        os.symlink(model_workspace.models_dir, w.path / "models")
    local = plan().collect(workspace=local_ws, progress=False)
    distributed = plan().collect(workspace=remote_ws, progress=False, executor=cluster)
    assert distributed.equals(local)


@pytest.mark.model
def test_a_trained_model_reaches_the_replicas_as_its_weights_folder(cluster, model_workspace, tmp_path, monkeypatch):
    """Ray replicas get a plain Transformers spec of the trained weights folder, never the
    TrainedModel with its training plan and rows (issue 18). The 'training' here links the base
    model's files as full fine-tuned weights, so the replicas' answers equal the base model's."""
    from lazyllm.backends import trainers
    from lazyllm.planner import executor as plan_executor
    from lazyllm.planner.train import trained_dir

    base = lazyllm.Transformers(lazyllm.DEFAULT_MODEL, batch_size=2, num_threads=1)
    from lazyllm.core.model_store import resolve_model_dir

    base_dir = resolve_model_dir(base, model_workspace.path)  # converted once per test session

    def link_base_weights(job):
        job.output_dir.mkdir(parents=True, exist_ok=True)
        for f in base_dir.iterdir():
            if f.is_file():
                os.symlink(f, job.output_dir / f.name)
        (job.output_dir / "COMPLETE").write_text(json.dumps({"rows_fingerprint": trainers.data_fingerprint(job.train)}))
        return trainers.TrainResult(output_dir=job.output_dir, adapter=False, metrics={}, resumed_from=None)

    monkeypatch.setattr(trainers, "train", link_base_weights)
    secret_rows = [{"q": f"Zorblax fact {i}", "a": f"Quibble {i}"} for i in range(4)]
    handle = lazyllm.from_dicts(secret_rows).train(lazyllm.SFT(base=base, prompt="q", response="a", lora=None))
    ws = lazyllm.Workspace(tmp_path / "ws")
    (ws.path / "models").mkdir(parents=True)
    os.symlink(base_dir, ws.path / "models" / base_dir.name, target_is_directory=True)  # the converted base only
    questions = lazyllm.from_dicts([{"q": "What is 2 + 2?"}, {"q": "Name a colour."}])
    result = plan_executor.collect(questions.generate("a", handle, prompt="{{ q }}", max_tokens=8).plan,
                                   workspace=ws, progress=False, executor=cluster)
    expected = questions.generate("a", base, prompt="{{ q }}", max_tokens=8).collect(
        workspace=model_workspace, progress=False)
    assert result.frames[0]["a"].to_list() == expected["a"].to_list()
    models = {rec["model"] for rec in result.replicas}
    assert models == {f"transformers:{trained_dir(handle, ws.path).name}"}, models  # a plain spec, not the handle
