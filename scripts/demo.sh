#!/usr/bin/env bash
# Set up and run the main job (docs -> QA -> judge -> preference pairs -> SFT + DPO with LoRA
# -> win rate, on the embedded model); arguments go to `lazyllm demo` (e.g. --limit 8).
# Installs into the project virtual environment .venv (scripts/install.sh): lazyllm with the
# `train` extra, which the fine-tuning stages use. Nothing else is needed: the default engine
# is transformers in float32, which runs on any x86 or ARM CPU and on CUDA GPUs
# (`lazyllm doctor` prints what this machine was detected to run fast and why).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh train
exec "${LAZYLLM_VENV:-.venv}/bin/python" -m lazyllm demo "$@"
