#!/usr/bin/env bash
# Install DataDreamer 0.46 (the PyPI package datadreamer.dev) into its own virtual
# environment, .venv-datadreamer at the repository root:  scripts/install_datadreamer.sh
#
# Used by the benchmark harness only (python -m benchmarks.run mainjob), which runs
# benchmarks/datadreamer_job.py with this environment's python as a subprocess.
#
# Why a separate environment: datadreamer.dev 0.46.0 pins transformers>=4.48.1,<4.50,
# trl==0.9.6, numpy<2 and pandas<2, while lazyllm's main environment runs
# transformers 5.23 and trl 1.16.
# Override the location with LAZYLLM_DATADREAMER_VENV=/path (the harness reads it too).
# Takes a few minutes; about 2 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${LAZYLLM_DATADREAMER_VENV:-.venv-datadreamer}"
DD_VERSION="${DATADREAMER_VERSION:-0.46.0}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
V="$VENV/bin/python"
# 1. torch first, pinned to the CPU build (pip's find-links holds the local wheel on
#    this project's machines): an unpinned torch would pull several GB of CUDA packages.
"$V" -m pip install --quiet "torch==2.13.0"
# 2. DataDreamer and its pinned dependencies; torch stays pinned in the same resolve.
#    DataDreamer pins numpy<2 but leaves pyarrow and datasets open at the top, and the
#    newest releases break it: pyarrow >= 21 needs numpy 2 ("pyarrow requires NumPy 2.0
#    or newer") and datasets 3.6 dropped a class DataDreamer patches
#    (TypedExamplesIterable). Pin both to releases of DataDreamer 0.46's time.
"$V" -m pip install --quiet "datadreamer.dev==$DD_VERSION" "torch==2.13.0" "pyarrow==19.0.1" "datasets==3.2.0"
# 3. a smoke test: the steps and the transformers LLM import, torch is still the CPU build.
"$V" -c "import datadreamer, torch, transformers; from datadreamer.llms import HFTransformers; \
from datadreamer.steps import Prompt; \
print('datadreamer', datadreamer.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
