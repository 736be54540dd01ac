"""Declarative model specs, and the embedded default model.

A spec names a model and the options that change its outputs; it holds no live
client, so it can be fingerprinted, stored in a plan and shipped to another process.
The backend instantiates the engine when the executor needs it and unloads it after
the collect. The spec classes live on the ground floor (:mod:`lazyllm.core.specs`),
where the engines can see them; this module adds the choice of the default model,
which reads the hardware.

>>> from lazyllm import Transformers
>>> Transformers("smollm2-135m-instruct").display_name
'transformers:smollm2-135m-instruct'
"""

from __future__ import annotations

import os
from typing import Any

from lazyllm.backends import hardware, vllm_engine
from lazyllm.core.catalog import DEFAULT_MODEL
from lazyllm.core.errors import MissingDependencyError, ParameterError
from lazyllm.core.protocols import ModelSpec
from lazyllm.core.specs import VLLM, OpenAI, TestModel, Transformers

__all__ = ["ModelSpec", "Transformers", "TestModel", "OpenAI", "VLLM", "DEFAULT_MODEL", "default_model",
           "as_model_spec"]

#: Rows the default model decodes together on the transformers engine (a performance setting: no
#: fingerprint depends on it). A decoding step reads every weight once whatever the number of rows, so on CPUs (and GPUs) the
#: cost per row falls as rows are added: measured for the 135M model on a 2-core Xeon, float32, a
#: 250-token cache, 13.6 ms per row and step at 32 rows, 10.1 at 64, 9.3 at 96
#: (``benchmarks/RESULTS.md``); its key/value cache is small (about 46 KB per token), so 64 rows of
#: 600 tokens take under 2 GB.
DEFAULT_BATCH_SIZE = 64


_DEFAULT_ENGINES = ("auto", "transformers", "vllm")


def default_model(engine: str | None = None, *, workspace: str | os.PathLike[str] | None = None) -> Transformers:
    """The embedded default model, SmolLM2-135M-Instruct in float32, on this machine's best engine.

    The returned spec's identity (fingerprints, cache keys) is the same on every machine:
    the packaged weights in float32. Only performance settings follow the hardware
    (:func:`lazyllm.backends.hardware.choose_default_engine`): on a CUDA GPU, vLLM when
    installed, else transformers on ``cuda``; on a CPU, transformers, unless
    ``lazyllm doctor --measure`` measured vLLM faster on this machine (kept in the
    workspace per machine). bfloat16 is never chosen: it changes the outputs, and CPUs
    without native bfloat16 (AVX2-only ones) run it several times slower than float32.
    ``lazyllm doctor`` prints the machine, what was detected and measured, and the choice.

    Parameters
    ----------
    engine : {"auto", "transformers", "vllm"}, optional
        Default: ``LAZYLLM_DEFAULT_ENGINE``, else ``"auto"``. Pins the engine (a
        performance setting: the identity does not change).
    workspace : path, optional
        Where a measurement for this machine is kept (default ``LAZYLLM_HOME`` or
        ``./.lazyllm``).

    Returns
    -------
    Transformers
        ``Transformers(DEFAULT_MODEL, dtype="float32", engine=..., device=...)``, with
        ``batch_size=DEFAULT_BATCH_SIZE`` on the transformers engine.

    Raises
    ------
    PlanError
        An unknown engine name.
    MissingDependencyError
        ``"vllm"`` pinned without vLLM installed.

    Cost: ``"auto"`` reads ``/proc/cpuinfo``, asks torch for CUDA devices and runs one
    short ``python -c`` per candidate vLLM interpreter, once per process.
    """
    choice = engine or os.environ.get("LAZYLLM_DEFAULT_ENGINE") or "auto"
    if choice not in _DEFAULT_ENGINES:
        raise ParameterError(f"Unknown default engine {choice!r}; choose one of {list(_DEFAULT_ENGINES)}.")
    machine = hardware.detect_machine()
    device = "cuda" if machine.cuda else "cpu"
    if choice == "transformers":
        return Transformers(DEFAULT_MODEL, device=device, batch_size=DEFAULT_BATCH_SIZE)
    has_vllm = vllm_engine.find_vllm_python() is not None
    if choice == "vllm":
        if not has_vllm:
            raise MissingDependencyError("vllm", "bash scripts/install_vllm.sh", "The default engine 'vllm' "
                                         "(LAZYLLM_DEFAULT_ENGINE)")
        return Transformers(DEFAULT_MODEL, device=device, engine="vllm")
    ws = workspace if workspace is not None else os.environ.get("LAZYLLM_HOME", ".lazyllm")
    picked = hardware.choose_default_engine(machine, ("transformers", "vllm") if has_vllm else ("transformers",),
                                            hardware.read_measurement(ws))
    if picked.engine == "vllm":  # vLLM schedules its own batch
        return Transformers(DEFAULT_MODEL, device=picked.device, engine="vllm")
    return Transformers(DEFAULT_MODEL, device=picked.device, batch_size=DEFAULT_BATCH_SIZE)


def as_model_spec(model: Any) -> ModelSpec:
    """Accept a spec, or a string (an alias, folder or Hub id for transformers)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return Transformers(model)
    if model is None:
        return default_model()
    raise ParameterError(
        f"model must be a model spec (for example lazyllm.Transformers('{DEFAULT_MODEL}')) or a string, "
        f"got {type(model).__name__}."
    )


