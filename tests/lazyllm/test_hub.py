"""Datasets on disk (save_dataset + datasets.load_dataset) and on the Hub (publish), offline.

The upload goes through huggingface_hub's real client to a small HTTP server on
127.0.0.1 that records the requests and answers the Hub API calls ``create_repo``,
``list_repo_files`` and ``create_commit`` make (create, tree, validate-yaml,
preupload, commit). Every file is declared a "regular" (inline base64) upload, so
the commit itself carries the bytes and the test can read the parquet shards back.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import huggingface_hub
import huggingface_hub.constants
import polars as pl
import pytest
import yaml

import lazyllm
from lazyllm import cards
from lazyllm.errors import PlanError
from lazyllm.hub import HubError, publish, publish_model, save_dataset, shard_names

TOKEN = "hf_test_token_do_not_leak_123"
MODEL = lazyllm.TestModel(name="hub")


def frame(n=7):
    docs = lazyllm.from_dicts([{"id": i, "doc": f"doc {i}"} for i in range(n)])
    return docs.generate("question", MODEL, prompt="Ask about {{ doc }}")


def front_matter(markdown: str) -> dict:
    return yaml.safe_load(markdown.split("---\n", 2)[1])


# ------------------------------------------------------------------------------------
# save_dataset
# ------------------------------------------------------------------------------------


def test_save_dataset_writes_hf_shards_that_datasets_loads(ws, tmp_path):
    from datasets import load_dataset

    f = frame(7)
    out = save_dataset(f, tmp_path / "ds", workspace=ws, max_shard_rows=3, title="Questions")
    expected = f.collect(workspace=ws)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["README.md", "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                     "data/train-00002-of-00003.parquet", "lazyllm_card.json"]
    assert [pl.read_parquet(out / n).height for n in names if n.endswith(".parquet")] == [3, 3, 1]
    loaded = load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert list(loaded) == ["train"]
    assert pl.from_arrow(loaded["train"].data.table).equals(expected)
    meta = front_matter((out / "README.md").read_text())
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": shard_names("train", 7, 3)}]}]
    card = cards.DataCard.load(out)
    assert card.fingerprint == f.fingerprint and card.to_dict()["dataset"]["splits"]["train"]["rows"] == 7


def test_splits_share_a_folder_and_a_resave_replaces_old_shards(ws, tmp_path):
    from datasets import load_dataset

    parts = frame(10).split({"train": 0.8, "test": 0.2}, seed=1)
    out = tmp_path / "ds"
    save_dataset(parts["train"], out, workspace=ws, max_shard_rows=3)  # 8 rows: 3 shards
    save_dataset(parts["test"], out, split="test", workspace=ws)
    save_dataset(parts["train"], out, workspace=ws, max_shard_rows=5)  # 8 rows: 2 shards replace the 3
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    splits = front_matter((out / "README.md").read_text())["configs"][0]["data_files"]
    assert {s["split"] for s in splits} == {"train", "test"}
    loaded = load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert {name: len(d) for name, d in loaded.items()} == {"train": 8, "test": 2}


def test_save_dataset_with_collected_data_and_bad_arguments(ws, tmp_path, counters):
    f = frame(4)
    df = f.collect(workspace=ws)
    calls = counters.CALLS
    out = save_dataset(f, tmp_path / "ds", workspace=ws, data=df)
    assert counters.CALLS == calls and pl.read_parquet(out / "data" / "train-00000-of-00001.parquet").equals(df)
    with pytest.raises(PlanError, match="columns"):
        save_dataset(f, tmp_path / "x", workspace=ws, data=df.drop("doc"))
    with pytest.raises(PlanError, match="split"):
        save_dataset(f, tmp_path / "x", workspace=ws, split="train/x")
    with pytest.raises(PlanError, match="max_shard_rows"):
        save_dataset(f, tmp_path / "x", workspace=ws, max_shard_rows=0)


def test_empty_frame_saves_one_empty_shard(ws, tmp_path):
    f = frame(3).filter(pl.col("id") > 100)
    out = save_dataset(f, tmp_path / "ds", workspace=ws)
    shard = pl.read_parquet(out / "data" / "train-00000-of-00001.parquet")
    assert shard.height == 0 and shard.columns == f.columns


# ------------------------------------------------------------------------------------
# A recording fake of the Hub API
# ------------------------------------------------------------------------------------


class FakeHub(ThreadingHTTPServer):
    """Records every request; keeps the files of each repo as committed."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.repos: dict[str, dict[str, bytes]] = {}  # "datasets/org/name" -> path -> bytes
        self.commits: list[dict] = []
        self.forbidden: set[str] = set()
        self.fail_commits_after: int | None = None  # answer 500 to commits after this many

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> tuple[str, bytes]:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        self.server.requests.append({"method": self.command, "path": path, "headers": dict(self.headers),
                                     "body": body})
        return path, body

    def _resolve(self, path: str, *, body: bool) -> bool:
        """``/<type>s/<org>/<name>/resolve/<rev>/<file>``: a file download (hf_hub_download)."""
        parts = path.strip("/").split("/")
        if len(parts) < 6 or parts[3] != "resolve":
            return False
        data = self.server.repos.get("/".join(parts[:3]), {}).get("/".join(parts[5:]))
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return True
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", f"{len(self.server.commits):040x}")
        self.end_headers()
        if body:
            self.wfile.write(data)
        return True

    def do_HEAD(self) -> None:
        path, _ = self._record()
        if not self._resolve(path, body=False):
            self._reply(404, {"error": "not found"})

    def do_GET(self) -> None:
        path, _ = self._record()
        if self._resolve(path, body=True):
            return
        parts = path.strip("/").split("/")  # api/<type>s/<org>/<name>/tree/<rev>
        if len(parts) >= 6 and parts[0] == "api" and parts[4] == "tree":
            files = self.server.repos.get("/".join(parts[1:4]), {})
            return self._reply(200, [{"type": "file", "path": p, "oid": "0" * 40, "size": len(b)}
                                     for p, b in sorted(files.items())])
        self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        path, body = self._record()
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            req = json.loads(body)
            key = f"{req.get('type', 'model')}s/{req['organization']}/{req['name']}"
            url = f"{self.server.url}/{key}"
            if req["organization"] in self.server.forbidden:
                return self._reply(403, {"error": "You don't have the rights to create a repo in this namespace"})
            if key in self.server.repos:
                return self._reply(409, {"error": "You already created this repo", "url": url})
            self.server.repos[key] = {}
            return self._reply(200, {"url": url})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if len(parts) == 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if len(parts) == 6 and parts[4] == "commit":
            if self.server.fail_commits_after is not None and len(self.server.commits) >= self.server.fail_commits_after:
                return self._reply(500, {"error": "the Hub is down"})
            key = "/".join(parts[1:4])
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            repo = self.server.repos.setdefault(key, {})
            for item in lines[1:]:
                if item["key"] == "file":
                    repo[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    repo.pop(item["value"]["path"], None)
            oid = f"{len(self.server.commits) + 1:040x}"
            self.server.commits.append({"repo": key, "header": lines[0], "operations": lines[1:]})
            return self._reply(200, {"commitUrl": f"{self.server.url}/{key}/commit/{oid}", "commitOid": oid})
        self._reply(404, {"error": f"unknown route {path}"})


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest forces offline mode
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # never through a proxy of the environment
    huggingface_hub.close_session()  # a fresh HTTP client reads that
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    huggingface_hub.close_session()


def _ops(commit: dict, key: str) -> dict[str, dict]:
    return {op["value"]["path"]: op["value"] for op in commit["operations"] if op["key"] == key}


# ------------------------------------------------------------------------------------
# publish
# ------------------------------------------------------------------------------------


def test_publish_creates_the_repo_and_commits_shards_and_card_once(ws, hub):
    f = frame(7)
    url = f.publish("me/questions", token=TOKEN, endpoint=hub.url, workspace=ws, private=True, max_shard_rows=4,
                    title="Questions")
    expected = f.collect(workspace=ws)
    assert url == f"{hub.url}/datasets/me/questions/commit/{1:040x}"

    create = next(r for r in hub.requests if r["path"] == "/api/repos/create")
    assert json.loads(create["body"]) == {"name": "questions", "organization": "me", "type": "dataset",
                                          "visibility": "private"}
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo"] == "datasets/me/questions" and "7 rows" in commit["header"]["value"]["summary"]
    files = _ops(commit, "file")
    assert sorted(files) == ["README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                             "lazyllm_card.json"]
    shards = [pl.read_parquet(io.BytesIO(hub.repos["datasets/me/questions"][p])) for p in sorted(files)
              if p.endswith(".parquet")]
    assert pl.concat(shards).equals(expected) and [s.height for s in shards] == [4, 3]
    readme = hub.repos["datasets/me/questions"]["README.md"].decode()
    meta = front_matter(readme)
    assert {"synthetic", "lazyllm"} <= set(meta["tags"]) and meta["pretty_name"] == "Questions"
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": shard_names("train", 7, 4)}]
    card = json.loads(hub.repos["datasets/me/questions"]["lazyllm_card.json"])
    assert card["fingerprint"]["logical"] == f.fingerprint
    for request in hub.requests:  # the token only ever travels in the Authorization header
        assert TOKEN.encode() not in request["body"]


def test_publish_again_replaces_the_split_and_keeps_other_splits(ws, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # token from the environment
    parts = frame(9).split({"train": 0.6, "validation": 0.4}, seed=0)
    publish(parts["train"], "me/qa", endpoint=hub.url, workspace=ws, max_shard_rows=2)  # 5 rows: 3 shards
    publish(parts["validation"], "me/qa", split="validation", endpoint=hub.url, workspace=ws)
    publish(parts["train"], "me/qa", endpoint=hub.url, workspace=ws)  # 1 shard now: the old 3 are deleted
    assert [r["path"] for r in hub.requests].count("/api/repos/create") == 3  # the 409s were accepted
    last = hub.commits[-1]
    assert sorted(_ops(last, "deletedFile")) == shard_names("train", 5, 2)
    repo = hub.repos["datasets/me/qa"]
    assert sorted(p for p in repo if p.startswith("data/")) == ["data/train-00000-of-00001.parquet",
                                                               "data/validation-00000-of-00001.parquet"]
    files = front_matter(repo["README.md"].decode())["configs"][0]["data_files"]
    assert files == [{"split": "validation", "path": ["data/validation-00000-of-00001.parquet"]},
                     {"split": "train", "path": ["data/train-00000-of-00001.parquet"]}]


def test_publish_without_a_token_fails_before_collecting(ws, hub, monkeypatch, counters):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="HF_TOKEN"):
        publish(frame(3), "me/x", endpoint=hub.url, workspace=ws)
    assert counters.CALLS == 0 and hub.requests == []


def test_a_refused_call_raises_hub_error_with_the_status(ws, hub):
    hub.forbidden.add("someone-else")
    with pytest.raises(HubError, match=r"HTTP 403.*write access") as info:
        publish(frame(3), "someone-else/x", token=TOKEN, endpoint=hub.url, workspace=ws)
    assert TOKEN not in str(info.value)
    assert hub.commits == []


def test_publish_model_uploads_the_folder_and_its_card(tmp_path, hub):
    model_dir = tmp_path / "adapter"
    model_dir.mkdir()
    (model_dir / "adapter_model.safetensors").write_bytes(b"\x00weights")
    (model_dir / "adapter_config.json").write_text("{}")
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "junk").write_text("x")
    card = cards.model_card("HuggingFaceTB/SmolLM2-135M-Instruct", "f" * 64, {"lora_r": 8}, {"loss": 0.5},
                            method="SFT")
    url = publish_model(model_dir, "me/tuned", card=card, token=TOKEN, endpoint=hub.url)
    assert url.startswith(f"{hub.url}/models/me/tuned/commit/")
    repo = hub.repos["models/me/tuned"]
    assert sorted(repo) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "lazyllm_card.json"]
    assert repo["adapter_model.safetensors"] == b"\x00weights"
    assert front_matter(repo["README.md"].decode())["tags"] == ["lazyllm", "trl", "sft"]


# ------------------------------------------------------------------------------------
# sink_hub: streaming shards, progress card, resume
# ------------------------------------------------------------------------------------

STATE = "lazyllm_stream_train.json"


def _shard_commits(hub) -> list[list[str]]:
    """Parquet files added by each commit, in commit order."""
    return [sorted(p for p in _ops(c, "file") if p.endswith(".parquet")) for c in hub.commits]


def _logged_requests(path) -> int:
    if not path.exists():
        return 0
    return sum(json.loads(line)["n"] for line in path.read_text().splitlines() if line.strip())


def test_sink_hub_commits_each_shard_then_a_final_card_with_token_statistics(ws, hub):
    f = frame(7)
    url = f.sink_hub("me/stream", rows_per_shard=3, token=TOKEN, endpoint=hub.url, workspace=ws, card_interval=0,
                     title="Streamed")
    expected = f.collect(workspace=ws)
    assert url == f"{hub.url}/datasets/me/stream/commit/{4:040x}"
    # one commit per partition, each with its shard, the state and (card_interval=0) the progress card
    assert _shard_commits(hub) == [["data/train-00000.parquet"], ["data/train-00001.parquet"],
                                   ["data/train-00002.parquet"], []]
    for commit in hub.commits[:3]:
        assert {STATE, "README.md", "lazyllm_card.json"} <= set(_ops(commit, "file"))
    repo = hub.repos["datasets/me/stream"]
    shards = [pl.read_parquet(io.BytesIO(repo[f"data/train-{i:05d}.parquet"])) for i in range(3)]
    assert pl.concat(shards).equals(expected) and [s.height for s in shards] == [3, 3, 1]
    # the first progress card: 3 of 7 input rows, an ETA
    first = base64.b64decode(next(op["value"]["content"] for op in hub.commits[0]["operations"]
                                  if op["key"] == "file" and op["value"]["path"] == "README.md")).decode()
    assert "## Generation progress" in first and "| input rows done | 3 of 7 |" in first and "| ETA |" in first
    # the final card: files, token statistics, the run's stats
    readme = repo["README.md"].decode()
    meta = front_matter(readme)
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": [f"data/train-{i:05d}.parquet"
                                                                            for i in range(3)]}]
    assert "## Streaming run" in readme and "## Token statistics" in readme and "## Generation progress" not in readme
    card = json.loads(repo["lazyllm_card.json"])
    assert card["rows"] == 7 and card["dataset"]["splits"]["train"]["rows"] == 7
    stats = card["streaming"]["token_statistics"]["question"]
    # TestModel: input tokens = words of the prompt, output tokens = words of the echo answer
    prompts = [len(f"Ask about doc {i}".split()) for i in range(7)]
    answers = [len(a.split()) for a in expected["question"]]
    assert stats["count"] == 7 and stats["input_mean"] == round(sum(prompts) / 7, 2)
    assert stats["output_p50"] == sorted(answers)[3] and stats["output_p95"] == max(answers)
    assert card["streaming"]["progress"]["output_tokens"] == sum(answers)
    assert card["streaming"]["run"]["nodes"][0]["calls"] == 7
    state = json.loads(repo[STATE])
    assert state["finished"] and sorted(state["shards"]) == ["0", "1", "2"] and state["fingerprint"] == f.fingerprint


def test_sink_hub_throttles_card_updates(ws, hub):
    frame(6).sink_hub("me/slow-card", rows_per_shard=2, token=TOKEN, endpoint=hub.url, workspace=ws,
                      card_interval=3600)
    with_card = ["README.md" in _ops(c, "file") for c in hub.commits]
    assert with_card == [True, False, False, True]  # the first shard's commit, then only the final one


def test_sink_hub_resumes_after_a_failed_upload_without_redoing_shards(tmp_path, hub):
    from lazyllm import Workspace

    log_path = tmp_path / "requests.jsonl"
    model = lazyllm.TestModel(name="hub", log_path=str(log_path))  # same fingerprint as MODEL
    docs = lazyllm.from_dicts([{"id": i, "doc": f"doc {i}"} for i in range(8)])
    f = docs.generate("question", model, prompt="Ask about {{ doc }}")
    hub.fail_commits_after = 1  # the Hub accepts the first shard, then fails
    with pytest.raises(HubError, match="HTTP 500"):
        f.sink_hub("me/resume", rows_per_shard=2, token=TOKEN, endpoint=hub.url,
                   workspace=Workspace(tmp_path / "ws1"))
    assert _shard_commits(hub) == [["data/train-00000.parquet"]]
    first_run = _logged_requests(log_path)
    assert 2 <= first_run <= 8
    hub.fail_commits_after = None
    # a fresh workspace (no cache): any partition run again would reach the engine
    f.sink_hub("me/resume", rows_per_shard=2, token=TOKEN, endpoint=hub.url, workspace=Workspace(tmp_path / "ws2"))
    assert _logged_requests(log_path) - first_run == 6  # partitions 1-3 only
    uploads = [p for files in _shard_commits(hub) for p in files]
    assert sorted(uploads) == [f"data/train-{i:05d}.parquet" for i in range(4)]  # each shard uploaded once
    repo = hub.repos["datasets/me/resume"]
    got = pl.concat([pl.read_parquet(io.BytesIO(repo[f"data/train-{i:05d}.parquet"])) for i in range(4)])
    assert got.equals(f.collect(workspace=Workspace(tmp_path / "ws2")))
    card = json.loads(repo["lazyllm_card.json"])
    assert card["streaming"]["progress"]["runs"] == 2 and card["streaming"]["token_statistics"]["question"]["count"] == 8


def test_sink_hub_resumes_after_kill_9(tmp_path, hub):
    """A run killed with SIGKILL mid-way; the rerun (another workspace) makes only the missing shards."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from lazyllm import Workspace

    log_path = tmp_path / "requests.jsonl"
    script = f"""
import lazyllm
model = lazyllm.TestModel(name="hub", delay=2.0, batch_size=2, log_path={str(log_path)!r})
docs = lazyllm.from_dicts([{{"id": i, "doc": f"doc {{i}}"}} for i in range(10)])
f = docs.generate("question", model, prompt="Ask about {{{{ doc }}}}")
f.sink_hub("me/killed", rows_per_shard=2, token={TOKEN!r}, endpoint={hub.url!r}, workspace={str(tmp_path / 'ws1')!r})
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "NO_PROXY": "127.0.0.1,localhost", "LAZYLLM_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(hub.commits) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(hub.commits) >= 2, "the run did not commit two shards in time"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert "data/train-00004.parquet" not in hub.repos["datasets/me/killed"]  # killed before the end
    done = len([p for p in hub.repos["datasets/me/killed"] if p.endswith(".parquet")])
    first_run = _logged_requests(log_path)
    model = lazyllm.TestModel(name="hub", batch_size=2, log_path=str(log_path))
    docs = lazyllm.from_dicts([{"id": i, "doc": f"doc {i}"} for i in range(10)])
    f = docs.generate("question", model, prompt="Ask about {{ doc }}")
    f.sink_hub("me/killed", rows_per_shard=2, token=TOKEN, endpoint=hub.url, workspace=Workspace(tmp_path / "ws2"))
    assert _logged_requests(log_path) - first_run == 10 - 2 * done
    uploads = [p for files in _shard_commits(hub) for p in files]
    assert sorted(uploads) == [f"data/train-{i:05d}.parquet" for i in range(5)]  # none uploaded twice


def test_sink_hub_rejects_bad_arguments_before_any_hub_call(ws, hub, counters):
    with pytest.raises(PlanError, match="rows_per_shard must be a positive int"):
        frame(3).sink_hub("me/x", rows_per_shard=0, token=TOKEN, endpoint=hub.url, workspace=ws)
    with pytest.raises(PlanError, match="card_interval"):
        frame(3).sink_hub("me/x", card_interval=-1, token=TOKEN, endpoint=hub.url, workspace=ws)
    with pytest.raises(PlanError, match="every row at once"):
        frame(3).sort("id").sink_hub("me/x", token=TOKEN, endpoint=hub.url, workspace=ws)
    assert hub.requests == [] and counters.CALLS == 0
