"""``lazyllm.backends.vllm_server.serve`` without vLLM: a stand-in "interpreter" (a small
script) plays the server, so the start, the readiness wait, the errors with the log tail
and the stop of the whole process group are checked here in seconds. The real vLLM server
runs in ``test_openai.py`` and ``test_vllm_reasoning.py`` (marked ``server``)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import urllib.request

import pytest

from lazyllm.backends import vllm_server
from lazyllm.backends.hardware import Machine
from lazyllm.backends.vllm_server import serve, server_command
from lazyllm.core.errors import EngineError, MissingDependencyError

#: answers ``GET /v1/models`` on the ``--port`` it is given, writes its pid (and its child's) to
#: ``$PIDS`` and starts a child in its process group, as vLLM's API server starts an engine process
FAKE_SERVER = textwrap.dedent("""\
    #!{python}
    import http.server, json, os, subprocess, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["PIDS"], "w") as fh:
        json.dump([os.getpid(), child.pid], fh)
    print("fake server on", port, "with", sys.argv[1:], flush=True)

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{"data": [{{"id": "m"}}]}}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http.server.HTTPServer(("127.0.0.1", port), Models).serve_forever()
""")


def _script(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purpose
        return fh.read().split(") ", 1)[1][0] != "Z"


def test_serve_yields_the_url_and_stops_the_whole_process_group(tmp_path, monkeypatch):
    python = _script(tmp_path, "python", FAKE_SERVER.format(python=sys.executable))
    pids = tmp_path / "pids.json"
    log = tmp_path / "server.log"
    with serve(tmp_path, python=python, served_model_name="m", log_path=log, timeout_s=60,
               env={"PIDS": str(pids)}) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with urllib.request.urlopen(url + "/models", timeout=5) as answer:
            assert json.load(answer)["data"][0]["id"] == "m"
        server, child = json.loads(pids.read_text())
        assert _alive(server) and _alive(child)
    assert not _alive(server) and not _alive(child)  # the engine process of the group too
    args = log.read_text()
    assert "'--served-model-name', 'm'" in args and "'--dtype', 'float32'" in args  # the log is kept


def test_a_server_that_exits_raises_engine_error_with_its_log_tail(tmp_path):
    python = _script(tmp_path, "python", "#!/bin/sh\necho 'ValueError: no config.json in the folder' >&2\nexit 3\n")
    with pytest.raises(EngineError, match=r"exited with 3(.|\n)*no config.json in the folder"):
        with serve(tmp_path, python=python, timeout_s=60):
            pytest.fail("the block must not run")


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    pid_file = tmp_path / "pid"
    python = _script(tmp_path, "python", f"#!/bin/sh\necho $$ > {pid_file}\necho loading\nexec sleep 600\n")
    with pytest.raises(EngineError, match=r"did not answer(.|\n)*within 1 s(.|\n)*loading"):
        with serve(tmp_path, python=python, timeout_s=1):
            pass
    assert not _alive(int(pid_file.read_text()))
    with pytest.raises(ProcessLookupError):
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # nothing left in its group


def test_no_vllm_interpreter_names_the_install_script(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_server, "find_vllm_python", lambda: None)
    with pytest.raises(MissingDependencyError, match="install_vllm.sh"):
        with serve(tmp_path):
            pass


def test_the_command_follows_the_machine(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 32, "num_key_value_heads": 8}))
    cpu = Machine(cpu_model="x", vendor="x", flags=frozenset(), cores=2)
    monkeypatch.setattr(vllm_server, "detect_machine", lambda: cpu)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    argv, env = server_command(tmp_path, python="py", port=8000, extra_args=("--reasoning-parser", "olmo3"))
    assert "--enforce-eager" in argv and "--no-enable-chunked-prefill" in argv
    assert "--tensor-parallel-size" not in argv and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert argv[-2:] == ["--reasoning-parser", "olmo3"] and "--served-model-name" not in argv
    gpus = Machine(cpu_model="x", vendor="x", flags=frozenset(), cores=32, cuda=(("H100", (9, 0)),) * 4)
    monkeypatch.setattr(vllm_server, "detect_machine", lambda: gpus)
    argv, env = server_command(tmp_path, python="py", port=8000, gpu_memory_utilization=0.5)
    assert "--enforce-eager" not in argv and "--no-enable-chunked-prefill" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5" and "VLLM_CPU_KVCACHE_SPACE" not in env
