#!/usr/bin/env bash
# Set up (if needed) and serve the default model through the plugin on 127.0.0.1.
#   PORT (default 8000); extra arguments go to `vllm serve`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_ASCEND_VENV:-$ROOT/.venv}"
"$ROOT/ci/setup.sh"
MODEL="$("$VENV/bin/python" -m vllm_ascend.tools.prepare_model)"
exec "$VENV/bin/vllm" serve "$MODEL" \
  --served-model-name SmolLM2-135M-Instruct \
  --host 127.0.0.1 --port "${PORT:-8000}" \
  --dtype float32 --max-model-len 2048 "$@"
