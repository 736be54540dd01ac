"""A local vLLM OpenAI-compatible server for the OpenAI engine: :func:`serve`.

``vllm.entrypoints.openai.api_server`` runs in a process group of its own, started with
the interpreter that has vLLM (:func:`lazyllm.backends.vllm_engine.find_vllm_python`:
``.venv-vllm`` or ``$LAZYLLM_VLLM_VENV``), so this module imports neither vLLM nor torch
and works from lazyllm's environment. The server's settings follow the machine as the
offline vLLM engine's do (:func:`lazyllm.backends.vllm_engine.resolve_settings`): on CPU
eager mode, no chunked prefill (per-request seeds; see that module's "Seeds") and
``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache; on CUDA GPUs CUDA graphs and tensor
parallelism over the GPUs the model's heads allow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from lazyllm.core.errors import EngineError, MissingDependencyError
from lazyllm.core.specs import VLLM
from .hardware import detect_machine
from .launch import free_port
from .vllm_engine import find_vllm_python, resolve_settings

__all__ = ["serve", "server_command"]

_INSTALL = "bash scripts/install_vllm.sh (creates .venv-vllm at the repository root)"
#: Characters of the server's log quoted in an error.
_LOG_TAIL = 3000


def server_command(model_dir: str | os.PathLike[str], *, python: str | os.PathLike[str], dtype: str = "float32",
                   host: str = "127.0.0.1", port: int, served_model_name: str | None = None,
                   max_model_len: int | None = 2048, seed: int = 0, gpu_memory_utilization: float | None = None,
                   extra_args: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and the environment additions that start the server (see :func:`serve`).

    Parameters
    ----------
    model_dir, dtype, host, served_model_name, max_model_len, seed, gpu_memory_utilization, extra_args
        As :func:`serve`.
    python : str or path-like
        The interpreter that has vLLM.
    port : int
        TCP port to listen on.

    Returns
    -------
    (list of str, dict of str to str)
        The argv of ``python -m vllm.entrypoints.openai.api_server ...`` with this
        machine's settings, and the environment variables to add to ``os.environ``.

    Raises
    ------
    ParameterError
        ``dtype`` is not one of lazyllm's dtypes.

    Examples
    --------
    >>> argv, env = server_command("/models/smollm2", python="/venv/bin/python", port=8000,
    ...                            served_model_name="smollm2")
    >>> argv[1:3], argv[argv.index("--served-model-name") + 1]
    (['-m', 'vllm.entrypoints.openai.api_server'], 'smollm2')
    >>> env["HF_HUB_OFFLINE"]
    '1'
    """
    machine = detect_machine()
    config = None
    config_path = Path(model_dir) / "config.json"
    if config_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            config = json.loads(config_path.read_text())
    settings = resolve_settings(VLLM(dtype=dtype), machine, config)
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", host, "--port", str(port), "--dtype", dtype, "--seed", str(seed),
            "--gpu-memory-utilization", str(gpu_memory_utilization or settings.gpu_memory_utilization)]
    if served_model_name is not None:
        argv += ["--served-model-name", served_model_name]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if settings.enforce_eager:
        argv.append("--enforce-eager")
    if settings.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if settings.on_cpu:
        argv.append("--no-enable-chunked-prefill")  # per-request seeds on CPU (vllm_engine "Seeds")
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return argv + [str(a) for a in extra_args], env


@contextlib.contextmanager
def serve(model_dir: str | os.PathLike[str], *, dtype: str = "float32", port: int | None = None,
          host: str = "127.0.0.1", served_model_name: str | None = None, max_model_len: int | None = 2048,
          seed: int = 0, gpu_memory_utilization: float | None = None, extra_args: Sequence[str] = (),
          log_path: str | os.PathLike[str] | None = None, timeout_s: float = 600,
          python: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run a local vLLM OpenAI-compatible server for the duration of a ``with`` block.

    The server (``python -m vllm.entrypoints.openai.api_server``) is started in a
    process group of its own with the interpreter that has vLLM, waited for until
    ``GET /v1/models`` answers, and stopped with the whole group (SIGTERM, SIGKILL after
    30 s) when the block ends, also on an exception. Pass the yielded URL to
    :class:`lazyllm.OpenAI` as ``base_url`` (the model name is ``served_model_name``).

    Parameters
    ----------
    model_dir : str or path-like
        A local model folder (``config.json``, tokenizer, weights), e.g. the one
        :func:`lazyllm.core.model_store.resolve_model_dir` gives for a spec. The Hub is
        not contacted (``HF_HUB_OFFLINE=1``).
    dtype : str
        Weights dtype (``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"``).
    port : int, optional
        TCP port; default a free one picked by the OS.
    host : str
        Address to listen on; default the loopback interface only.
    served_model_name : str, optional
        The model name clients send; default ``model_dir`` as given (vLLM's default).
    max_model_len : int or None
        Context length in tokens (prompt + answer); None: the model's own.
    seed : int
        The server's base seed (requests with their own seed use theirs).
    gpu_memory_utilization : float, optional
        Fraction of each GPU's memory vLLM takes; default 0.9 on GPUs, 0.5 on CPU
        (unused there), as :func:`~lazyllm.backends.vllm_engine.resolve_settings` picks.
    extra_args : sequence of str
        More command-line arguments for the server, appended last
        (``("--reasoning-parser", "olmo3")``).
    log_path : str or path-like, optional
        File for the server's stdout and stderr (kept). Default a temporary file,
        removed when the block ends.
    timeout_s : float
        Seconds to wait for the server to answer (start and model load: about 30-60 s
        for SmolLM2-135M on 2 CPU cores).
    python : str or path-like, optional
        The interpreter that runs vLLM; default :func:`~lazyllm.backends.vllm_engine.find_vllm_python`.
    env : mapping of str to str, optional
        Environment variables for the server, over ``os.environ`` and this machine's settings.

    Yields
    ------
    str
        The base URL of the OpenAI-compatible API, ``http://<host>:<port>/v1``.

    Raises
    ------
    MissingDependencyError
        No interpreter here can import vLLM (install it with ``bash scripts/install_vllm.sh``).
    EngineError
        The server exited before answering, or did not answer within ``timeout_s``;
        the message ends with the tail of its log.

    Notes
    -----
    Cost: one vLLM process (and its engine process) for the block's duration; no LLM
    calls by itself.

    Examples
    --------
    >>> import lazyllm
    >>> from lazyllm.core.model_store import resolve_model_dir
    >>> folder = resolve_model_dir(lazyllm.Transformers(), ".lazyllm")  # doctest: +SKIP
    >>> with serve(folder, served_model_name="smollm2") as url:  # doctest: +SKIP
    ...     frame = lazyllm.from_dicts([{"q": "What is 2 + 2?"}]).generate(
    ...         "a", lazyllm.OpenAI("smollm2", base_url=url), prompt="{{ q }}")
    ...     df = frame.collect()
    """
    interpreter = python if python is not None else find_vllm_python()
    if interpreter is None:
        error = MissingDependencyError("vllm", "vllm", "A local vLLM server")
        ImportError.__init__(error, "A local vLLM server needs vLLM, which no interpreter here can import. Install "
                                    f"it with: {_INSTALL}; or set LAZYLLM_VLLM_VENV (or LAZYLLM_VLLM_PYTHON) to one "
                                    "that has vllm.", name="vllm")
        raise error
    port = port if port is not None else free_port(host)
    argv, added = server_command(model_dir, python=interpreter, dtype=dtype, host=host, port=port,
                                 served_model_name=served_model_name, max_model_len=max_model_len, seed=seed,
                                 gpu_memory_utilization=gpu_memory_utilization, extra_args=extra_args)
    own_log = log_path is None
    if own_log:
        handle, name = tempfile.mkstemp(prefix="lazyllm-vllm-server-", suffix=".log")
        os.close(handle)
        log = Path(name)
    else:
        log = Path(log_path)  # type: ignore[arg-type]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **added, **(env or {})},
                                start_new_session=True)
    url = f"http://{host}:{port}/v1"
    try:
        _wait_ready(proc, url, log, timeout_s)
        yield url
    finally:
        _stop(proc)
        if own_log:
            log.unlink(missing_ok=True)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-_LOG_TAIL:]
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """Poll ``GET /models`` once a second until it answers 200; raise EngineError when the
    server exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise EngineError(f"The vLLM server exited with {proc.returncode} before answering at {url}. "
                              "Check the model folder, dtype and the server's arguments; its log ends with:\n"
                              + _tail(log))
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise EngineError(f"The vLLM server did not answer at {url} within {timeout_s:g} s. Raise timeout_s "
                              "on a slow or busy machine; its log ends with:\n" + _tail(log))
        time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it starts an engine process), SIGKILL after 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # children left behind in the group
        os.killpg(proc.pid, signal.SIGKILL)
