"""Multi-process launch for training: lazyllm starts its own workers, the user never runs ``torchrun``.

:func:`launch` runs a module-level function in ``nproc`` worker processes on this
machine through PyTorch's elastic launcher
(:func:`torch.distributed.launcher.api.elastic_launch`, the machinery behind
``torchrun --standalone``): a c10d rendezvous on ``127.0.0.1`` and a free port, the
``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` variables
that ``accelerate`` reads, each worker's exception recorded and re-raised here, and
every worker stopped when one fails. Each worker is ``python -m lazyllm.backends.launch
<payload>``: the function and its arguments travel in a pickle in a private temporary
folder, and the caller's ``__main__`` is never re-imported (unlike
``multiprocessing``'s spawn).

:func:`device_plan` turns the ``devices`` argument of a training job (``2``,
``["cuda:0", "cuda:1"]``, ``["cpu", "cpu"]``) into how many processes to start, on which
accelerator and with which ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from lazyllm.core.errors import EngineError, ParameterError

__all__ = ["DevicePlan", "device_plan", "free_port", "launch"]

_HOST = "127.0.0.1"
_WORKER_MODULE = "lazyllm.backends.launch"
_ELASTIC_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


@dataclass(frozen=True)
class DevicePlan:
    """Where a training runs.

    Attributes
    ----------
    accelerator : str
        ``"cpu"`` or ``"cuda"``.
    nproc : int
        Number of processes (1: the caller's own process, no launch).
    cuda_visible : tuple of str or None
        The ``CUDA_VISIBLE_DEVICES`` entries the workers get (``("0", "1")``); ``None``
        leaves the variable as it is.
    """

    accelerator: str
    nproc: int
    cuda_visible: tuple[str, ...] | None = None

    @property
    def distributed(self) -> bool:
        """True when the training runs in ``nproc > 1`` worker processes."""
        return self.nproc > 1


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_plan(devices: int | Sequence[str] | None) -> DevicePlan:
    """How many processes a training needs, and on which devices.

    Parameters
    ----------
    devices : int, list of str or None
        ``None``: one process on the first GPU if there is one, else the CPU.
        ``n`` (int >= 1): ``n`` processes, one per GPU (``cuda:0`` .. ``cuda:n-1``) when
        this machine has at least ``n`` GPUs, else ``n`` CPU processes (gloo).
        A list: one process per entry, all ``"cuda:<i>"`` (distinct) or all ``"cpu"``.

    Returns
    -------
    DevicePlan

    Raises
    ------
    PlanError
        ``n < 1``, an empty list, an entry that is neither ``cpu`` nor ``cuda:<i>``, a
        mix of both, a GPU listed twice, or a GPU this machine does not have.
    """
    if devices is None:
        return DevicePlan("cuda" if _cuda_count() else "cpu", 1)
    if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
        raise ParameterError(f"devices={devices!r} is not understood. Valid: None, a number of processes (2), "
                        "or a list such as ['cuda:0', 'cuda:1'] or ['cpu', 'cpu'].")
    if isinstance(devices, int):
        if devices < 1:
            raise ParameterError(f"devices={devices} asks for no process. Pass a number >= 1, or None for one process.")
        gpus = _cuda_count()
        if gpus >= devices:
            return DevicePlan("cuda", devices, tuple(str(i) for i in range(devices)) if devices > 1 else None)
        if gpus:
            raise ParameterError(f"devices={devices} asks for {devices} GPUs but this machine has {gpus}. "
                            f"Pass devices={gpus} or fewer, or a list of 'cpu' entries to train on the CPU.")
        return DevicePlan("cpu", devices)
    entries = [str(d).strip().lower() for d in devices]
    if not entries:
        raise ParameterError("devices=[] names no device. Pass None, a number, or e.g. ['cuda:0', 'cuda:1'].")
    if all(e == "cpu" for e in entries):
        return DevicePlan("cpu", len(entries))
    indices: list[str] = []
    for e in entries:
        kind, _, index = e.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ParameterError(f"devices={list(devices)!r}: {e!r} is not 'cpu' or 'cuda:<index>', or the list "
                            "mixes CPU and GPU entries. Use only 'cuda:<i>' entries (e.g. ['cuda:0', 'cuda:1']) "
                            "or only 'cpu'.")
        indices.append(index)
    if len(set(indices)) != len(indices):
        raise ParameterError(f"devices={list(devices)!r} lists a GPU twice. List each GPU once.")
    gpus = _cuda_count()
    missing = [f"cuda:{i}" for i in indices if int(i) >= gpus]
    if missing:
        raise ParameterError(f"devices={list(devices)!r}: this machine has {gpus} GPU(s), so {missing} do not exist. "
                        f"Use indices below {gpus}.")
    return DevicePlan("cuda", len(indices), tuple(indices))


def free_port(host: str = _HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(updates: dict[str, str | None]) -> Iterator[None]:
    """Set (or unset, for ``None``) environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in updates}
    try:
        for k, v in updates.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _kept_signal_handlers() -> Iterator[None]:
    """Restore the caller's signal handlers, which the elastic agent replaces, afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # the agent only installs handlers from the main thread
        return
    saved = {}
    for name in _ELASTIC_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            saved[sig] = signal.getsignal(sig)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError, OSError):
                signal.signal(sig, handler)


def launch(
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    *,
    nproc: int,
    cuda_visible: Sequence[str] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    threads_per_process: int | None = None,
    timeout_s: int = 900,
) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nproc`` worker processes on this machine and collect the results.

    Each worker is a fresh ``python -m lazyllm.backends.launch <payload>`` process (as
    ``torchrun`` starts them), so the caller's ``__main__`` is never re-imported: a
    plain script without an ``if __name__ == "__main__":`` guard can launch a training.

    Parameters
    ----------
    fn : callable
        A module-level function the workers can import (it is pickled by reference).
        Each worker calls it once, with the ``torch.distributed`` environment
        (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
        set; it initialises the process group itself (``accelerate`` does it in a
        trainer).
    args : sequence
        Picklable positional arguments, sent to every worker.
    nproc : int
        Number of worker processes (>= 1).
    cuda_visible : list of str, optional
        GPU indices to expose as ``CUDA_VISIBLE_DEVICES`` (worker ``i`` uses the
        ``i``-th, as ``cuda:<LOCAL_RANK>``).
    log_dir : path, optional
        Where the elastic agent keeps each worker's error file (a temporary folder by
        default); kept when a worker fails, removed after a successful launch.
    threads_per_process : int, optional
        ``torch.set_num_threads`` in each worker (and ``OMP_NUM_THREADS``); default:
        the CPU cores divided by ``nproc``, at least 1.
    timeout_s : int
        Seconds the rendezvous waits for all workers to start.

    Returns
    -------
    dict of int to object
        The return value of each worker that returned something other than None, by
        global rank.

    Raises
    ------
    PlanError
        ``nproc < 1``.
    EngineError
        A worker raised or died; the message names the rank and its error.

    Notes
    -----
    Cost: starting ``nproc`` Python processes (each imports torch and the training
    libraries again, about 5-15 s) plus whatever ``fn`` costs. The caller's signal
    handlers and environment are restored afterwards.
    Source: PyTorch elastic (``torch.distributed.launcher.api.elastic_launch``, the
    launcher of ``torchrun --standalone``).
    """
    if nproc < 1:
        raise ParameterError(f"nproc={nproc}: at least one worker process is needed.")
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = threads_per_process or max(1, (os.cpu_count() or 1) // nproc)
    run_id = f"lazyllm-{uuid.uuid4().hex[:12]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run_id}-"))  # payload, results, default logs
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=f"{_HOST}:{free_port()}",
        rdzv_configs={"timeout": timeout_s},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
        local_addr=_HOST,
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir or workdir / "logs")),
    )
    env: dict[str, str | None] = {
        "OMP_NUM_THREADS": str(threads),
        # the workers import what this process can (a script's folder, a test's rootdir)
        "PYTHONPATH": os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p),
        "TORCHELASTIC_SIGNALS_TO_HANDLE": os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE"),
    }
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in cuda_visible)
    failed = False
    try:
        payload = workdir / "payload.pkl"
        with open(payload, "wb") as fh:
            pickle.dump({"fn": fn, "args": tuple(args), "threads": threads, "results": str(workdir)}, fh)
        try:
            with _environ(env), _kept_signal_handlers():
                elastic_launch(config, sys.executable)("-m", _WORKER_MODULE, str(payload))
        except ChildFailedError as err:
            failed = True
            failures = "; ".join(f"rank {rank} (exit code {f.exitcode}): {_failure_message(f)}"
                                 for rank, f in sorted(err.failures.items()))
            raise EngineError(
                f"{getattr(fn, '__name__', fn)} failed in a worker process: {failures}. "
                f"The workers' logs and error files are under {config.logs_specs.root_log_dir}. "
                "Fix the error above and rerun; a training resumes from its last checkpoint."
            ) from err
        results = {}
        for path in workdir.glob("result-*.pkl"):
            with open(path, "rb") as fh:
                results[int(path.stem.partition("-")[2])] = pickle.load(fh)
        return results
    finally:
        if not failed:  # keep the logs of a failed launch, drop those of a good one
            shutil.rmtree(workdir, ignore_errors=True)
            _remove_run_logs(config.logs_specs, log_dir)
        elif log_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            (workdir / "payload.pkl").unlink(missing_ok=True)


def _remove_run_logs(logs_specs: Any, log_dir: str | os.PathLike[str] | None) -> None:
    run_dir = getattr(logs_specs, "_run_log_dir", None)
    if run_dir and os.path.isdir(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    root = log_dir or getattr(logs_specs, "root_log_dir", None)
    if root and os.path.isdir(root):
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only when empty


def _worker_main(payload_path: str) -> None:
    """What each worker process runs, under torch elastic's ``record`` (a failure's traceback
    goes to the error file the launcher reads); torch is imported here, not when lazyllm loads."""
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_run_payload)(payload_path)


def _run_payload(payload_path: str) -> None:
    """Load the payload, set threads, call ``fn``, keep its result."""
    with open(payload_path, "rb") as fh:
        payload = pickle.load(fh)
    if payload["threads"]:
        import torch

        torch.set_num_threads(payload["threads"])
    value = payload["fn"](*payload["args"])
    if value is not None:
        rank = int(os.environ.get("RANK", "0"))
        target = Path(payload["results"]) / f"result-{rank}.pkl"
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh)
        os.replace(tmp, target)


def _failure_message(failure: Any) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", message)
        if isinstance(message, dict):
            message = message.get("message", str(message))
    text = str(message).strip() or f"died (signal or exit code {failure.exitcode}), see {Path(failure.error_file)}"
    return text if len(text) < 4000 else text[:2000] + " [...] " + text[-1500:]


if __name__ == "__main__":  # a worker: python -m lazyllm.backends.launch <payload>
    _worker_main(sys.argv[1])
