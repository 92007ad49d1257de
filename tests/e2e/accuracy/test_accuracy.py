"""lm-eval accuracy gates (``configs/*.yaml``), each run through vLLM on the plugin.

Fast (the README's ``make test``): the committed tiny adder, fp32 (within tolerance of its
expected exact match) and W8A8_DYNAMIC (one-sided Wilson bound against fp32 on the same
items), lm-eval's in-process vllm backend. Everything else is ``slow`` (``make nightly``):
the server backend, every other quant scheme, SmolLM2-135M few-shot tasks, the tiny MoE
under TP2+EP / DP2+EP with and without EPLB (answers equal to the single process; with
EPLB the engine's log must show experts moved and no failed transfer).

Results and ``report.md`` go to ``$VLLM_ASCEND_ACCURACY_RESULTS`` (default: a pytest
temporary directory); the report's path is printed at the end of the session. With
``VLLM_ASCEND_ACCURACY_REUSE=1`` a config whose ``<name>.json`` is already there is not run
again (to re-judge or extend an earlier session's results).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.accuracy import report, runner
from tests.e2e.accuracy.config import load_all

CONFIGS = load_all()
pytestmark = pytest.mark.e2e


def _param(name: str):
    marks = [pytest.mark.slow] if CONFIGS[name].slow else []
    return pytest.param(name, id=name, marks=marks)


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> Path:
    env = os.environ.get("VLLM_ASCEND_ACCURACY_RESULTS")
    out = Path(env) if env else tmp_path_factory.mktemp("accuracy")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def results(results_dir):
    """name -> result, each config evaluated at most once per session."""
    done: dict[str, dict] = {}
    reuse = os.environ.get("VLLM_ASCEND_ACCURACY_REUSE") == "1"

    def get(name: str) -> dict:
        cached = results_dir / f"{name}.json"
        if name not in done and reuse and cached.is_file():
            done[name] = {**json.loads(cached.read_text()), "log": "(reused)"}
        if name not in done:
            done[name] = runner.evaluate(CONFIGS[name], results_dir)
        return done[name]

    yield get
    if done:
        print(f"\naccuracy report: {report.render(results_dir)}")


@pytest.mark.parametrize("name", [_param(n) for n in CONFIGS])
def test_gate(name, results):
    cfg = CONFIGS[name]
    result = results(name)
    reference = results(cfg.reference) if cfg.reference else None
    rows = report.judge(cfg, result, reference)
    failed = [f"{r.task} {r.metric}: {r.value:.4f} ({r.verdict.detail})" for r in rows
              if not r.verdict.passed]
    assert not failed, f"{name}: " + "; ".join(failed) + f" (log: {result['log']})"
    if "eplb" in result:  # an equal answer proves nothing unless experts actually moved
        act = result["eplb"]
        assert act["slots_moved_max_rank"] > 0 and not act["failed_transfers"], \
            f"{name}: EPLB moved no expert or a transfer failed: {act} (log: {result['log']})"
