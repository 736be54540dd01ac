"""What this machine runs fast: CPU features, CUDA devices, and the default model's engine.

The embedded default model must run well on every machine a user has, not only on the
one its defaults were measured on. A CPU's matrix kernels for bfloat16 are fast only
where the CPU has native bfloat16 instructions (``avx512_bf16`` on AMD Zen 4 / Intel
Cooper Lake and later, ``amx_bf16`` on Intel Sapphire Rapids and later); elsewhere
(an AVX2-only AMD EPYC, for example) PyTorch and vLLM emulate it and run several times
slower than float32. So the choice here is made from what the machine says about itself,
and, where that is not enough, from a measurement on this machine
(``lazyllm doctor --measure``), kept in the workspace per machine.

Reproducibility comes first: the default model's identity (what fingerprints and the
cache see) is SmolLM2-135M-Instruct in **float32** on every machine. Only performance
settings follow the hardware: the engine (transformers or vLLM, both float32: greedy
texts are identical, see ``benchmarks/RESULTS.md``), the device and the thread count.
A workspace computed on one machine is therefore served from the cache on any other,
whatever engine that one picks.

>>> m = Machine(cpu_model="AMD EPYC 7B13", vendor="AuthenticAMD", flags=frozenset({"avx2", "fma"}), cores=2)
>>> m.native_bf16
False
>>> choose_default_engine(m, installed=("transformers", "vllm")).engine
'transformers'
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazyllm.core.layout import machines_dir

__all__ = [
    "Machine",
    "EngineChoice",
    "detect_machine",
    "parse_cpuinfo",
    "choose_default_engine",
    "read_measurement",
    "write_measurement",
    "FLAGS_THAT_MATTER",
]

#: CPU flags (as /proc/cpuinfo spells them) that decide which kernels run fast.
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
_NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
#: CUDA compute capability from which bfloat16 tensor cores exist (Ampere, 8.0).
_CUDA_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Machine:
    """What a machine says about itself.

    Parameters
    ----------
    cpu_model : str
        The CPU's model name (``/proc/cpuinfo``'s ``model name``).
    vendor : str
        ``GenuineIntel``, ``AuthenticAMD``, or the architecture on non-x86 machines.
    flags : frozenset of str
        The CPU feature flags, as ``/proc/cpuinfo`` lists them.
    cores : int
        CPUs this process may run on (``os.sched_getaffinity``).
    cuda : tuple of (name, (major, minor))
        The CUDA devices torch sees and their compute capability; empty without a GPU.
    """

    cpu_model: str
    vendor: str
    flags: frozenset[str]
    cores: int
    cuda: tuple[tuple[str, tuple[int, int]], ...] = ()

    @property
    def native_bf16(self) -> bool:
        """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
        return bool(self.flags & _NATIVE_BF16)

    @property
    def cuda_bf16(self) -> bool:
        """True when every CUDA device has bfloat16 tensor cores (compute capability >= 8.0)."""
        return bool(self.cuda) and all(cap >= _CUDA_BF16_CAPABILITY for _, cap in self.cuda)

    @property
    def key(self) -> str:
        """A short stable id of this kind of machine (CPU model, flags that matter, cores, GPUs):
        measurements are kept per key."""
        desc = {"cpu": self.cpu_model, "flags": sorted(self.flags & set(FLAGS_THAT_MATTER)), "cores": self.cores,
                "cuda": [list(map(str, d)) for d in self.cuda]}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line: CPU model, flags that matter (present ones), cores, GPUs."""
        present = [f for f in FLAGS_THAT_MATTER if f in self.flags]
        gpus = ", ".join(f"{name} (sm {cap[0]}.{cap[1]})" for name, cap in self.cuda) or "no CUDA GPU"
        return f"{self.cpu_model} ({self.vendor}) · flags: {' '.join(present) or 'none of ' + ', '.join(FLAGS_THAT_MATTER)} · " \
               f"{self.cores} cores · {gpus}"


def parse_cpuinfo(text: str) -> tuple[str, str, frozenset[str]]:
    r"""CPU model name, vendor and flags from the text of ``/proc/cpuinfo`` (first CPU).

    >>> model, vendor, flags = parse_cpuinfo("vendor_id : AuthenticAMD\nmodel name : AMD EPYC 7B13\nflags : fpu avx2\n")
    >>> model, vendor, sorted(flags)
    ('AMD EPYC 7B13', 'AuthenticAMD', ['avx2', 'fpu'])
    """
    model, vendor, flags = "", "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / ARM
            flags = frozenset(value.split())
    return model, vendor, flags


def _cpuinfo() -> tuple[str, str, frozenset[str]]:
    try:
        model, vendor, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, vendor, flags = "", "", frozenset()
    return model or platform.processor() or platform.machine(), vendor or platform.machine(), flags


def _cuda_devices() -> tuple[tuple[str, tuple[int, int]], ...]:
    if platform.system() == "Linux" and not Path("/proc/driver/nvidia/version").exists():
        return ()  # no NVIDIA driver loaded: no CUDA device (and no torch import, which takes a second)
    # torch is a base dependency; it is imported here (deferred: it is heavy) only to ask CUDA.
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple((torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))  # type: ignore[misc]
                 for i in range(torch.cuda.device_count()))


def detect_machine() -> Machine:
    """Read this machine's CPU model, flags, usable cores and CUDA devices.

    Cost: reads ``/proc/cpuinfo``; where an NVIDIA driver is loaded, imports torch to ask
    for CUDA devices (about a second the first time in a process).
    """
    model, vendor, flags = _cpuinfo()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return Machine(cpu_model=model, vendor=vendor, flags=flags, cores=cores, cuda=_cuda_devices())


@dataclass(frozen=True)
class EngineChoice:
    """The default model's performance settings on one machine, and why.

    ``dtype`` is always float32 for the default model: it is part of the model's
    identity (fingerprints, cache), which must not change from machine to machine.
    """

    engine: str  # "transformers" or "vllm"
    device: str  # "cpu" or "cuda"
    dtype: str = "float32"
    reasons: tuple[str, ...] = field(default_factory=tuple)


def choose_default_engine(
    machine: Machine,
    installed: Sequence[str],
    measurement: dict[str, Any] | None = None,
) -> EngineChoice:
    """Pick the engine and device of the default model from the machine and what is installed.

    Rules, in order:

    1. A CUDA GPU: vLLM when installed (continuous batching, CUDA graphs), else
       transformers on ``cuda``.
    2. A CPU with a measurement for this machine (``lazyllm doctor --measure``): the
       engine that finished the measured main-job-shaped workload first.
    3. Otherwise transformers on the CPU: float32 matrix kernels are fast on every x86
       CPU with AVX2 and on ARM, while vLLM's CPU backend depends on oneDNN kernels that
       some CPUs lack (it falls back to plain torch linear layers there) and starts in
       about 30 s, which a short job does not win back.

    The dtype stays float32 in every case (the model's identity); bfloat16 is never
    chosen, and a CPU without native bfloat16 is named in the reasons.

    Parameters
    ----------
    machine : Machine
        From :func:`detect_machine`.
    installed : sequence of str
        Engines that can run here (``"transformers"`` always; ``"vllm"`` when found).
    measurement : dict, optional
        From :func:`read_measurement`: ``{"seconds": {engine: s}, ...}``.

    Returns
    -------
    EngineChoice
    """
    reasons = []
    bf16 = "native bfloat16" if machine.native_bf16 else "no native bfloat16 (AVX512-BF16/AMX-BF16 absent)"
    reasons.append(f"CPU: {bf16}; the default model stays float32 on every machine (its identity)")
    if machine.cuda:
        if "vllm" in installed:
            return EngineChoice("vllm", "cuda", reasons=(*reasons, "CUDA GPU present and vLLM installed"))
        return EngineChoice("transformers", "cuda", reasons=(*reasons, "CUDA GPU present; vLLM not installed"))
    if measurement and measurement.get("machine") == machine.key:
        seconds = {e: s for e, s in measurement.get("seconds", {}).items() if e in installed and s is not None}
        if seconds:
            best = min(seconds, key=seconds.__getitem__)
            shown = ", ".join(f"{e} {s:.1f} s" for e, s in sorted(seconds.items()))
            return EngineChoice(best, "cpu", reasons=(*reasons, f"measured on this machine: {shown}"))
    why = "no measurement on this machine (lazyllm doctor --measure)" if "vllm" in installed \
        else "vLLM not installed"
    return EngineChoice("transformers", "cpu", reasons=(*reasons, f"CPU only; {why}: transformers float32"))


def _measurement_path(workspace: str | os.PathLike[str]) -> Path:
    return machines_dir(workspace) / f"{detect_machine_key()}.json"


_KEY_CACHE: dict[str, str] = {}


def detect_machine_key() -> str:
    """:attr:`Machine.key` of this machine (cached per process)."""
    if "key" not in _KEY_CACHE:
        _KEY_CACHE["key"] = detect_machine().key
    return _KEY_CACHE["key"]


def read_measurement(workspace: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The engine measurement kept in ``workspace`` for this machine, or None."""
    path = _measurement_path(workspace)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_measurement(workspace: str | os.PathLike[str], seconds: dict[str, float | None],
                      detail: dict[str, Any]) -> Path:
    """Keep a measurement (seconds per engine for the same workload) for this machine."""
    machine = detect_machine()
    path = _measurement_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine.key, "describe": machine.describe(), "seconds": seconds, "detail": detail,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine_record": asdict(machine)}
    record["machine_record"]["flags"] = sorted(machine.flags & set(FLAGS_THAT_MATTER))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path
