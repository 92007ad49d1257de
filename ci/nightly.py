"""The nightly run (``make nightly`` = ``ci/nightly.sh`` = set-up, then this script).

Steps, in order, each one child process with a time limit (its process group is killed
when it runs over); every step runs even when an earlier one failed. The whole run has a
budget (``--budget-min``, default 88): a step's limit is its own or what is left of the
budget, whichever is smaller, so ``make nightly`` ends within 90 minutes:

1. ``e2e-multicard``: ``MULTICARD``, slow tests of tests/e2e/test_moe_models.py (TP2,
   TP2+EP, DP2+EP of the tiny MoE models, fp32 and W4A8, a comm-method override under
   TP2+EP, each against single process) and tests/e2e/test_shared_weight.py (DP2+EP with
   ``layer_sharding``, compiled, against unsharded);
2. ``e2e-eplb``: ``EPLB``, slow tests of tests/e2e/test_eplb_serving.py (EPLB on under
   DP2+EP, TP2+EP, EP4, stop-the-world, expert maps);
3. ``accuracy``: ``pytest tests/e2e/accuracy -m ''`` (every accuracy gate, the slow ones
   included; results and ``report.md`` in ``<run>/accuracy``), skipped when the directory
   does not exist;
4. ``bench``: ``bench run --profile nightly`` of every suite into
   ``<run>/bench/<suite>.json`` (the profile: each suite's lighter options, bench/run.py);
5. ``compare``: ``bench compare`` of each suite's file against the previous nightly's
   (``compare/<suite>.md`` and ``.json``), when a previous nightly has it.

Results go to ``$VLLM_ASCEND_NIGHTLY_DIR`` (default ``~/.cache/vllm-ascend/nightly``,
outside git): ``<UTC time>/`` per run with each step's log, ``summary.md`` and
``summary.json`` (exit status and minutes per step, the comparisons' verdicts). The
previous nightly is the newest earlier run directory holding ``bench/<suite>.json`` files.

``--dry-run`` prints the plan (commands, limits, the result directory, the previous run and
the comparisons it would make) and runs nothing. ``--only STEP[,STEP]`` / ``--skip ...``
select steps. Exit status: 0 all passed and no regression; 1 a step failed or a comparison
found a regression (a comparison that cannot decide, e.g. another machine, is reported,
not failed); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import stop_group

ROOT = Path(__file__).resolve().parent.parent
#: bench run's suites (``bench.run.SUITES``; a unit test keeps the two equal).
SUITES = ("decode", "quant-decode", "serve", "moe", "eplb", "eplb-serve", "ops", "shared-weight")
STEP_NAMES = ("e2e-multicard", "e2e-eplb", "accuracy", "bench", "compare")


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_min: float
    why_skipped: str | None = None
    outcome: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment


def results_root() -> Path:
    env = os.environ.get("VLLM_ASCEND_NIGHTLY_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("VLLM_ASCEND_CACHE") or Path.home() / ".cache" / "vllm-ascend"
    return Path(cache) / "nightly"


def previous_run(root: Path, current: Path | None) -> Path | None:
    """The newest run directory under ``root`` (other than ``current``) holding at least one
    ``bench/<suite>.json``; None when there is none."""
    if not root.is_dir():
        return None
    runs = sorted((p for p in root.iterdir() if p.is_dir() and p != current), reverse=True)
    for run in runs:
        if any((run / "bench" / f"{s}.json").is_file() for s in SUITES):
            return run
    return None


def comparisons(previous: Path | None, run_dir: Path) -> list[tuple[str, Path, Path]]:
    """(suite, previous file, this run's file) for each suite the previous run has."""
    if previous is None:
        return []
    return [(s, previous / "bench" / f"{s}.json", run_dir / "bench" / f"{s}.json")
            for s in SUITES if (previous / "bench" / f"{s}.json").is_file()]


#: The multicard selection: each layout (TP2, TP2+EP, DP2+EP) once in float and once with
#: W4A8 experts, across both tiny MoE models; a comm-method override; layer sharding compiled
#: (DP2+EP) and its error path. The other parametrizations (every model x layout) are the
#: same code paths on other inputs: ``make test-all`` runs them.
MULTICARD = [
    *(f"tests/e2e/test_moe_models.py::test_multi_process_matches_single_process[{case}]"
      for case in ("qwen3_moe-tp2", "deepseek_v3-tp2_ep", "qwen3_moe-dp2_ep",
                   "deepseek_v3-w4a8-tp2", "qwen3_moe-w4a8-tp2_ep", "deepseek_v3-w4a8-dp2_ep")),
    "tests/e2e/test_moe_models.py::test_comm_override_under_tp2_ep[all2allv]",
    "tests/e2e/test_shared_weight.py::test_sharded_tokens_match_unsharded"
    "[deepseek_v3-dp2_ep-compiled]",
    "tests/e2e/test_shared_weight.py::test_unknown_suffix_lists_the_models_linear_suffixes",
]
#: EPLB on: DP2+EP (float), TP2+EP (W4A8), EP4, stop-the-world, expert maps (the fast gate of
#: ``make test`` covers TP2+EP float with planner kill and injected faults).
EPLB = [
    "tests/e2e/test_eplb_serving.py::test_layouts_keep_tokens_while_experts_move"
    "[deepseek_v3-dp2_ep]",
    "tests/e2e/test_eplb_serving.py::test_layouts_keep_tokens_while_experts_move"
    "[qwen3_moe-w4a8-tp2_ep]",
    "tests/e2e/test_eplb_serving.py::test_ep4",
    "tests/e2e/test_eplb_serving.py::test_stop_the_world_mode_keeps_tokens",
    "tests/e2e/test_eplb_serving.py::test_expert_map_round_trip",
    "tests/e2e/test_eplb_serving.py::test_malformed_expert_map_is_a_clear_error",
]


def plan(python: str, run_dir: Path) -> list[Step]:
    # --durations: each test's time in the step's log, for keeping the plan in budget.
    pytest = [python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=-ra",
              "--durations=40"]
    # Limits: headroom over the measured minutes (12.7, 8.4, 30.7, 29.8: docs/benchmarks.md,
    # "make nightly"); the 88-minute budget caps the whole run.
    steps = [
        Step("e2e-multicard", pytest + ["-m", "slow", *MULTICARD], 30),
        Step("e2e-eplb", pytest + ["-m", "slow", *EPLB], 25),
        Step("accuracy", pytest + ["tests/e2e/accuracy", "-m", ""], 45,
             env={"VLLM_ASCEND_ACCURACY_RESULTS": str(run_dir / "accuracy")}),
        Step("bench", [python, "-m", "bench", "run", "--profile", "nightly", *SUITES, "--out",
                       str(run_dir / "bench")], 40),
        Step("compare", [], 3),
    ]
    if not (ROOT / "tests" / "e2e" / "accuracy").is_dir():
        steps[2].why_skipped = "tests/e2e/accuracy does not exist"
    return steps


def select(steps: list[Step], only: list[str] | None, skip: list[str] | None) -> list[Step]:
    for names, option in ((only, "--only"), (skip, "--skip")):
        bad = [n for n in names or [] if n not in STEP_NAMES]
        if bad:
            raise ValueError(f"{option}: unknown step(s) {', '.join(bad)}; accepted: "
                             f"{', '.join(STEP_NAMES)}")
    for s in steps:
        if only and s.name not in only:
            s.why_skipped = s.why_skipped or "not in --only"
        if skip and s.name in skip:
            s.why_skipped = s.why_skipped or "in --skip"
    return steps


def run_step(step: Step, log_path: Path, limit_min: float) -> dict:
    """Run one step's command, its output to ``log_path``, within ``limit_min``."""
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# {' '.join(step.argv)}\n")
        log.flush()
        proc = subprocess.Popen(step.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **step.env})
        try:
            code = proc.wait(timeout=max(limit_min, 0.01) * 60)
            timed_out = False
        except subprocess.TimeoutExpired:
            stop_group(proc)
            code, timed_out = -1, True
    if step.name == "accuracy" and code == 5:  # pytest: nothing collected
        code = 0
    return {"exit": code, "timed_out": timed_out, "minutes": round((time.monotonic() - t0) / 60, 1),
            "log": log_path.name}


def run_compare(python: str, pairs, out_dir: Path) -> dict:
    """bench compare per suite -> {suite: verdict}; verdict ok / regression / not comparable
    (compare's exit 2) / missing (this run has no file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts = {}
    for suite, old, new in pairs:
        if not new.is_file():
            verdicts[suite] = "missing (this run wrote no result)"
            continue
        proc = subprocess.run([python, "-m", "bench", "compare", str(old), str(new), "--json",
                               str(out_dir / f"{suite}.json")], cwd=ROOT, capture_output=True,
                              text=True)
        (out_dir / f"{suite}.md").write_text(proc.stdout + proc.stderr)
        verdicts[suite] = {0: "ok", 1: "regression"}.get(proc.returncode,
                                                         f"not comparable: {proc.stderr.strip()}")
    return verdicts


def previous_minutes(previous: Path | None) -> dict[str, float]:
    """Minutes per step of the previous nightly (its summary.json), {} when unknown."""
    try:
        doc = json.loads((previous / "summary.json").read_text()) if previous else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v["minutes"] for k, v in (doc.get("steps") or {}).items()
            if isinstance(v, dict) and "minutes" in v}


def summary_md(run_dir: Path, steps: list[Step], previous: Path | None, verdicts: dict) -> str:
    lines = [f"# nightly {run_dir.name}", "", "| step | result | minutes | log |",
             "|---|---|---:|---|"]
    for s in steps:
        o = s.outcome
        if s.why_skipped:
            lines.append(f"| {s.name} | skipped: {s.why_skipped} | | |")
        else:
            res = "timed out" if o.get("timed_out") else (
                "passed" if o.get("exit") == 0 else f"**failed** (exit {o.get('exit')})")
            lines.append(f"| {s.name} | {res} | {o.get('minutes', '')} | {o.get('log', '')} |")
    lines += ["", f"previous nightly: {previous or 'none'}"]
    for suite, v in verdicts.items():
        lines.append(f"- {suite}: {v}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ci/nightly.sh", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--only", type=lambda s: s.split(","), help="comma-separated steps")
    p.add_argument("--skip", type=lambda s: s.split(","), help="comma-separated steps")
    p.add_argument("--budget-min", type=float, default=88.0,
                   help="minutes for the whole run (88); a step gets at most what is left")
    p.add_argument("--results", help="results directory (default $VLLM_ASCEND_NIGHTLY_DIR, "
                   "else ~/.cache/vllm-ascend/nightly)")
    a = p.parse_args(argv)
    root = Path(a.results) if a.results else results_root()
    run_dir = root / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    python = sys.executable
    try:
        steps = select(plan(python, run_dir), a.only, a.skip)
    except ValueError as e:
        print(f"nightly: {e}", file=sys.stderr)
        return 2
    previous = previous_run(root, run_dir)
    pairs = comparisons(previous, run_dir)
    if not pairs and not steps[4].why_skipped:
        steps[4].why_skipped = "no previous nightly with bench results"
    if a.dry_run:
        print(f"nightly (dry run): results would go to {run_dir}")
        for s in steps:
            what = f"skipped: {s.why_skipped}" if s.why_skipped else (
                shlex.join(s.argv) if s.argv else "bench compare per suite")
            print(f"  {s.name:<14} limit {s.limit_min:>4.0f} min  {what}")
        print(f"  previous nightly: {previous or 'none'}")
        for suite, old, new in pairs:
            print(f"  compare {suite}: {old} -> {new}")
        total = sum(s.limit_min for s in steps if not s.why_skipped)
        print(f"  step limits add up to {total:.0f} min; the run stops at {a.budget_min:.0f}")
        last = previous_minutes(previous)
        if last:
            print("  previous nightly's minutes: " + ", ".join(f"{k} {v}" for k, v in last.items()))
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    verdicts: dict = {}
    deadline = time.monotonic() + a.budget_min * 60
    for s in steps:
        if s.why_skipped:
            print(f"[nightly] {s.name}: skipped ({s.why_skipped})", file=sys.stderr, flush=True)
            continue
        limit = min(s.limit_min, (deadline - time.monotonic()) / 60)
        if limit <= 0:
            s.why_skipped = f"the {a.budget_min:.0f}-minute budget is spent"
            print(f"[nightly] {s.name}: skipped ({s.why_skipped})", file=sys.stderr, flush=True)
            continue
        print(f"[nightly] {s.name}: started, limit {limit:.0f} min", file=sys.stderr,
              flush=True)
        if s.name == "compare":
            t0 = time.monotonic()
            verdicts = run_compare(python, pairs, run_dir / "compare")
            bad = any(v == "regression" for v in verdicts.values())
            s.outcome = {"exit": int(bad), "timed_out": False,
                         "minutes": round((time.monotonic() - t0) / 60, 1), "log": "compare/"}
        else:
            s.outcome = run_step(s, run_dir / f"{s.name}.log", limit)
        print(f"[nightly] {s.name}: exit {s.outcome['exit']} ({s.outcome['minutes']} min)",
              file=sys.stderr, flush=True)
    text = summary_md(run_dir, steps, previous, verdicts)
    (run_dir / "summary.md").write_text(text)
    (run_dir / "summary.json").write_text(json.dumps({
        "run": str(run_dir), "previous": str(previous) if previous else None,
        "steps": {s.name: s.outcome or {"skipped": s.why_skipped} for s in steps},
        "comparisons": verdicts}, indent=2) + "\n")
    print(text)
    failed = [s for s in steps if s.outcome and s.outcome["exit"] != 0]
    spent = [s for s in steps if s.why_skipped and "budget" in s.why_skipped]
    return 1 if failed or spent else 0


if __name__ == "__main__":
    sys.exit(main())
