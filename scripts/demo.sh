#!/usr/bin/env bash
# Set up and run the main job (docs -> QA on the embedded model); arguments go to `lazyllm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m lazyllm demo "$@"
