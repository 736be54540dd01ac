#!/usr/bin/env bash
# Set up and run the whole test suite (real embedded model, real LMDB; CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
exec "${PYTHON:-python3}" -m pytest -q "$@"
