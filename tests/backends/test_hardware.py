"""The default model's engine follows the machine; its identity never does.

The selection logic is tested with the CPU feature sets of the machines this project
runs on (an AVX2-only AMD EPYC, an AMD EPYC with AVX-512 and AVX512-BF16, an Intel Xeon
with AMX) and with CUDA GPUs, without those machines.
"""

from __future__ import annotations

import pytest

from lazyllm.backends import hardware
from lazyllm.backends.hardware import Machine, choose_default_engine, parse_cpuinfo

AVX2_ONLY = Machine(cpu_model="AMD EPYC 7B13 64-Core Processor", vendor="AuthenticAMD",
                    flags=frozenset({"sse4_2", "avx", "avx2", "fma"}), cores=2)
ZEN4 = Machine(cpu_model="AMD EPYC 9B14", vendor="AuthenticAMD",
               flags=frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}), cores=2)
SAPPHIRE_RAPIDS = Machine(cpu_model="Intel(R) Xeon(R) Platinum 8481C", vendor="GenuineIntel",
                          flags=frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16",
                                           "amx_int8"}), cores=2)
A100 = Machine(cpu_model="AMD EPYC 7763", vendor="AuthenticAMD", flags=frozenset({"avx2"}), cores=16,
               cuda=(("NVIDIA A100-SXM4-80GB", (8, 0)),))
T4 = Machine(cpu_model="Intel Xeon", vendor="GenuineIntel", flags=frozenset({"avx2"}), cores=8,
             cuda=(("Tesla T4", (7, 5)),))


def test_native_bfloat16_is_read_from_the_cpu_flags():
    assert not AVX2_ONLY.native_bf16
    assert ZEN4.native_bf16 and SAPPHIRE_RAPIDS.native_bf16
    assert A100.cuda_bf16 and not T4.cuda_bf16 and not AVX2_ONLY.cuda_bf16


@pytest.mark.parametrize("machine", [AVX2_ONLY, ZEN4, SAPPHIRE_RAPIDS], ids=["avx2", "zen4", "amx"])
@pytest.mark.parametrize("installed", [("transformers",), ("transformers", "vllm")], ids=["tf", "tf+vllm"])
def test_cpus_without_a_measurement_run_transformers_in_float32(machine, installed):
    choice = choose_default_engine(machine, installed)
    assert (choice.engine, choice.device, choice.dtype) == ("transformers", "cpu", "float32")
    assert ("no native bfloat16" in choice.reasons[0]) == (not machine.native_bf16)


def test_a_measurement_of_this_machine_picks_the_faster_engine_and_never_bfloat16():
    measured = {"machine": SAPPHIRE_RAPIDS.key, "seconds": {"transformers": 190.0, "vllm": 120.0}}
    choice = choose_default_engine(SAPPHIRE_RAPIDS, ("transformers", "vllm"), measured)
    assert (choice.engine, choice.dtype) == ("vllm", "float32")
    assert "measured on this machine" in choice.reasons[-1]
    slower = {"machine": AVX2_ONLY.key, "seconds": {"transformers": 190.0, "vllm": 1500.0}}
    assert choose_default_engine(AVX2_ONLY, ("transformers", "vllm"), slower).engine == "transformers"
    failed = {"machine": AVX2_ONLY.key, "seconds": {"transformers": 190.0, "vllm": None}}
    assert choose_default_engine(AVX2_ONLY, ("transformers", "vllm"), failed).engine == "transformers"


def test_a_measurement_of_another_machine_or_an_uninstalled_engine_is_ignored():
    other = {"machine": SAPPHIRE_RAPIDS.key, "seconds": {"transformers": 190.0, "vllm": 120.0}}
    assert AVX2_ONLY.key != SAPPHIRE_RAPIDS.key
    assert choose_default_engine(AVX2_ONLY, ("transformers", "vllm"), other).engine == "transformers"
    mine = {"machine": SAPPHIRE_RAPIDS.key, "seconds": {"transformers": 190.0, "vllm": 120.0}}
    assert choose_default_engine(SAPPHIRE_RAPIDS, ("transformers",), mine).engine == "transformers"


def test_gpus_run_vllm_when_installed_else_transformers_on_cuda():
    assert (choose_default_engine(A100, ("transformers", "vllm")).engine,
            choose_default_engine(A100, ("transformers", "vllm")).device) == ("vllm", "cuda")
    t4 = choose_default_engine(T4, ("transformers",))
    assert (t4.engine, t4.device, t4.dtype) == ("transformers", "cuda", "float32")


def test_cpuinfo_parsing_reads_model_vendor_and_flags():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
            "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
            "vendor_id\t: GenuineIntel\nflags\t\t: fpu\n")
    model, vendor, flags = parse_cpuinfo(text)
    assert model == "Intel(R) Xeon(R) Platinum 8481C" and vendor == "GenuineIntel"
    assert {"amx_bf16", "avx512_bf16"} <= flags and len(flags) == 6


def test_this_machine_is_detected_and_its_measurement_round_trips(tmp_path):
    machine = hardware.detect_machine()
    assert machine.cores >= 1 and machine.cpu_model
    assert hardware.read_measurement(tmp_path) is None
    hardware.write_measurement(tmp_path, {"transformers": 10.0, "vllm": None}, {"transformers": {"load_s": 1}})
    kept = hardware.read_measurement(tmp_path)
    assert kept["machine"] == machine.key and kept["seconds"] == {"transformers": 10.0, "vllm": None}
