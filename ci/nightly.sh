#!/usr/bin/env bash
# The nightly run: set up (if needed), then ci/nightly.py (multicard e2e, every accuracy
# gate, every bench suite, bench compare against the previous nightly). Under 90 minutes on
# a 2-core machine. Results: $VLLM_ASCEND_NIGHTLY_DIR (default ~/.cache/vllm-ascend/nightly).
# Arguments go to ci/nightly.py: --dry-run (print the plan only), --only/--skip STEP,...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_ASCEND_VENV:-$ROOT/.venv}"
case " $* " in
  *" --dry-run "*) ;;  # a dry run changes nothing, set-up included
  *) "$ROOT/ci/setup.sh" ;;
esac
cd "$ROOT"
exec "$VENV/bin/python" "$ROOT/ci/nightly.py" "$@"
