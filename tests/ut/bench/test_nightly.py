"""ci/nightly.py's plumbing: the plan, step selection, the previous run, the comparisons, the
budget and the summary. The steps are replaced by tiny Python commands: nothing heavy runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run as bench_run

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("nightly", ROOT / "ci" / "nightly.py")
nightly = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("nightly", nightly)  # dataclasses look their module up there
_spec.loader.exec_module(nightly)


def doc(samples: list[float]) -> dict:
    return {"benchmark": "ops", "primary_metric": "latency_ms", "higher_is_better": False,
            "results": [{"op": "x", "latency_ms": sorted(samples)[len(samples) // 2],
                         "latency_ms_samples": samples}]}


def write_run(root: Path, name: str, suites: dict[str, list[float]]) -> Path:
    run = root / name
    (run / "bench").mkdir(parents=True)
    for suite, samples in suites.items():
        (run / "bench" / f"{suite}.json").write_text(json.dumps(doc(samples)))
    return run


def test_suites_are_bench_runs():
    assert nightly.SUITES == bench_run.SUITES


def test_plan_covers_the_issue(tmp_path):
    steps = {s.name: s for s in nightly.plan("py", tmp_path / "run")}
    assert list(steps) == list(nightly.STEP_NAMES)
    multicard, eplb = steps["e2e-multicard"].argv, steps["e2e-eplb"].argv
    assert multicard[-len(nightly.MULTICARD) - 2:] == ["-m", "slow", *nightly.MULTICARD]
    assert eplb[-len(nightly.EPLB) - 2:] == ["-m", "slow", *nightly.EPLB]
    ids = " ".join(nightly.MULTICARD + nightly.EPLB)
    for layout in ("-tp2]", "-tp2_ep]", "-dp2_ep]", "w4a8", "test_ep4", "stop_the_world",
                   "expert_map", "test_shared_weight.py::test_sharded"):
        assert layout in ids, layout
    assert steps["bench"].argv[:6] == ["py", "-m", "bench", "run", "--profile", "nightly"]
    assert set(nightly.SUITES) <= set(steps["bench"].argv)
    assert steps["bench"].argv[-1] == str(tmp_path / "run" / "bench")


def test_selected_tests_exist_and_are_slow():
    """Every node id of the e2e steps is collected with ``-m slow`` (a renamed or unmarked
    test would otherwise fail, or silently shrink, the nightly)."""
    ids = nightly.MULTICARD + nightly.EPLB
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o",
                           "addopts=", "--collect-only", "-q", "-m", "slow", *ids],
                          cwd=nightly.ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert sorted(collected) == sorted(ids)


def test_unknown_steps_are_refused(capsys):
    assert nightly.main(["--dry-run", "--only", "bench,nope"]) == 2
    assert "--only: unknown step(s) nope; accepted: e2e-multicard" in capsys.readouterr().err


def test_previous_run_is_the_newest_with_results(tmp_path):
    assert nightly.previous_run(tmp_path / "none", None) is None
    write_run(tmp_path, "20260101-000000", {"ops": [1.0]})
    newer = write_run(tmp_path, "20260102-000000", {"eplb": [1.0]})
    (tmp_path / "20260103-000000" / "bench").mkdir(parents=True)  # a run that wrote nothing
    current = tmp_path / "20260104-000000"
    assert nightly.previous_run(tmp_path, current) == newer
    pairs = nightly.comparisons(newer, current)
    assert pairs == [("eplb", newer / "bench" / "eplb.json", current / "bench" / "eplb.json")]


def test_dry_run_runs_nothing(tmp_path, monkeypatch, capsys):
    prev = write_run(tmp_path, "20260101-000000", {"ops": [1.0] * 4})
    (prev / "summary.json").write_text(json.dumps({"steps": {"bench": {"minutes": 31.5}}}))

    def refuse(*a, **k):
        raise AssertionError("a dry run started a process")

    monkeypatch.setattr(nightly.subprocess, "Popen", refuse)
    monkeypatch.setattr(nightly.subprocess, "run", refuse)
    assert nightly.main(["--dry-run", "--results", str(tmp_path), "--skip", "e2e-eplb"]) == 0
    out = capsys.readouterr().out
    assert "e2e-eplb" in out and "skipped: in --skip" in out
    assert f"compare ops: {prev / 'bench' / 'ops.json'}" in out
    assert "previous nightly's minutes: bench 31.5" in out
    assert "'tests/e2e/test_moe_models.py::test_multi_process_matches_single_process" \
        "[qwen3_moe-tp2]'" in out  # shell-quoted
    assert sorted(p.name for p in tmp_path.iterdir()) == [prev.name]  # nothing created


@pytest.fixture
def fake_plan(monkeypatch):
    """Steps as tiny Python commands: multicard passes, eplb fails, accuracy skipped, bench
    writes an ops file whose latencies are ``slow`` times the previous run's."""

    def install(slow: float, sleep_step: str | None = None):
        def plan(python, run_dir):
            samples = [10.0 * slow * w for w in (1.0, 1.01, 0.99, 1.02)]
            write = (f"import json, pathlib; p = pathlib.Path({str(run_dir / 'bench')!r}); "
                     f"p.mkdir(parents=True); (p / 'ops.json').write_text("
                     f"json.dumps({doc(samples)!r}))")
            steps = [nightly.Step("e2e-multicard", [sys.executable, "-c", "print('ok')"], 1),
                     nightly.Step("e2e-eplb", [sys.executable, "-c", "raise SystemExit(3)"], 1),
                     nightly.Step("accuracy", [], 1, why_skipped="tests/e2e/accuracy does not "
                                  "exist"),
                     nightly.Step("bench", [sys.executable, "-c", write], 1),
                     nightly.Step("compare", [], 1)]
            for s in steps:
                if s.name == sleep_step:
                    s.argv, s.limit_min = [sys.executable, "-c", "import time; time.sleep(60)"], 0.02
            return steps

        monkeypatch.setattr(nightly, "plan", plan)

    return install


def test_run_summary_and_regression(tmp_path, fake_plan, capsys):
    write_run(tmp_path, "20000101-000000", {"ops": [10.0, 10.1, 9.9, 10.2]})
    fake_plan(slow=1.5)
    assert nightly.main(["--results", str(tmp_path)]) == 1
    run = max(tmp_path.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"]["e2e-multicard"]["exit"] == 0
    assert summary["steps"]["e2e-eplb"]["exit"] == 3
    assert summary["steps"]["accuracy"] == {"skipped": "tests/e2e/accuracy does not exist"}
    assert summary["comparisons"] == {"ops": "regression"}
    assert (run / "compare" / "ops.md").read_text().count("regression") >= 1
    assert "print('ok')" in (run / "e2e-multicard.log").read_text()
    md = (run / "summary.md").read_text()
    assert "| e2e-eplb | **failed** (exit 3) |" in md and "- ops: regression" in md
    capsys.readouterr()


def test_same_numbers_compare_ok(tmp_path, fake_plan, capsys):
    write_run(tmp_path, "20000101-000000", {"ops": [10.0, 10.1, 9.9, 10.2]})
    fake_plan(slow=1.0)
    nightly.main(["--results", str(tmp_path), "--skip", "e2e-eplb"])
    run = max(tmp_path.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["comparisons"] == {"ops": "ok"}
    assert summary["steps"]["compare"]["exit"] == 0
    capsys.readouterr()


def test_a_step_over_its_limit_is_stopped(tmp_path, fake_plan, capsys):
    fake_plan(slow=1.0, sleep_step="e2e-multicard")
    assert nightly.main(["--results", str(tmp_path), "--only", "e2e-multicard"]) == 1
    summary = json.loads((max(tmp_path.iterdir()) / "summary.json").read_text())
    assert summary["steps"]["e2e-multicard"]["timed_out"] is True
    capsys.readouterr()


def test_spent_budget_skips_the_rest(tmp_path, fake_plan, capsys):
    fake_plan(slow=1.0)
    assert nightly.main(["--results", str(tmp_path), "--budget-min", "0"]) == 1
    summary = json.loads((max(tmp_path.iterdir()) / "summary.json").read_text())
    assert "budget is spent" in summary["steps"]["e2e-multicard"]["skipped"]
    capsys.readouterr()
