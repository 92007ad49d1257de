#!/usr/bin/env bash
# Set up (if needed) and serve the default model through the plugin on 127.0.0.1.
#   PORT                  port (default 8000)
#   VLLM_ASCEND_KV_CACHE  KV-cache size given to vLLM (default 2G = 2 GiB; vLLM's K/M/G/T)
# Extra arguments go to `vllm serve` (`make serve ARGS='--max-num-seqs 16'` does the same).
#
# The KV cache is sized explicitly because vLLM's CPU default (--gpu-memory-utilization 0.92)
# claims 92% of NUMA node 0 at start and refuses to start on a busy machine or one whose
# memory is split over nodes. Passing --kv-cache-memory-bytes or --gpu-memory-utilization
# yourself (or setting VLLM_CPU_KVCACHE_SPACE) replaces this default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_ASCEND_VENV:-$ROOT/.venv}"
"$ROOT/ci/setup.sh"
MODEL="$("$VENV/bin/python" -m vllm_ascend.tools.prepare_model)"

memory_flags=(--kv-cache-memory-bytes "${VLLM_ASCEND_KV_CACHE:-2G}")
for arg in "$@"; do
  case "$arg" in
    --kv-cache-memory-bytes|--kv-cache-memory-bytes=*|--gpu-memory-utilization|--gpu-memory-utilization=*)
      memory_flags=() ;;
  esac
done
[ -n "${VLLM_CPU_KVCACHE_SPACE:-}" ] && memory_flags=()

echo "==> serving $MODEL on 127.0.0.1:${PORT:-8000}; the first start compiles the model" \
     "(about 2 minutes on 2 cores) before it answers /health" >&2
exec "$VENV/bin/vllm" serve "$MODEL" \
  --served-model-name SmolLM2-135M-Instruct \
  --host 127.0.0.1 --port "${PORT:-8000}" \
  --dtype float32 --max-model-len 2048 "${memory_flags[@]}" "$@"
