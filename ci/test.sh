#!/usr/bin/env bash
# Set up (if needed) and run the unit tests plus the fast end-to-end tests.
# Extra arguments go to pytest (e.g. `-k rms`); `-m slow` selection is yours to add.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_ASCEND_VENV:-$ROOT/.venv}"
"$ROOT/ci/setup.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests/ut tests/e2e -m "not slow" "$@"
