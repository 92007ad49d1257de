"""Benchmarks of vllm-ascend against vanilla vLLM (``python -m bench --help``).

- ``python -m bench decode``: decode throughput, plugin vs vanilla, one fresh process each;
- ``python -m bench quant-decode``: decode throughput of quantized checkpoints through the
  plugin (fp32 vs W8A8_DYNAMIC vs W4A8_DYNAMIC) against the memory-bandwidth floor;
- ``python -m bench eplb``: EPLB placement policies on trace-driven expert loads (balancedness,
  slots moved, planner time);
- ``python -m bench compare BASE.json HEAD.json``: regression, improvement or noise per metric;
- ``python -m bench ab BASE_REF [HEAD_REF] SUITE``: both commits built in worktrees, the
  suite run on them interleaved, then compared.

Results are JSON files (default ``bench/results/``, gitignored); see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

#: Where result files go by default.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The repository root (so child processes can ``python -m bench.xxx`` from anywhere).
REPO_ROOT = Path(__file__).resolve().parent.parent


def csv_list(kind):
    """argparse type: a comma-separated list of ``kind`` (e.g. ``1,8``)."""

    def parse(s: str) -> list:
        items = [kind(x.strip()) for x in s.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse


def csv_choices(choices, what: str):
    """argparse type: a comma-separated subset of ``choices``; an unknown item names the
    accepted ones (``what``: e.g. "backend")."""

    def parse(s: str) -> list[str]:
        items = csv_list(str)(s)
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {bad}; accepted: {', '.join(choices)}")
        return items

    return parse


def run_logged(cmd: list[str], env: dict, log, verbose: bool, rename=None, cwd=None):
    """Run a benchmark child (in ``cwd``, default the repository root), its output appended
    to ``log``; its ``[bench]`` lines (every line when ``verbose``; passed through
    ``rename``) go to stderr. -> (exit status, the last 40 lines). Interrupting the parent
    terminates the child."""
    import subprocess

    proc = subprocess.Popen(cmd, env=env, cwd=cwd or REPO_ROOT, text=True, errors="replace",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: list[str] = []
    try:
        for line in proc.stdout:
            log.write(line)
            if line.startswith("[bench]") or verbose:
                sys.stderr.write(rename(line) if rename else line)
            tail = (tail + [line])[-40:]
        return proc.wait(), tail
    except BaseException:
        proc.terminate()
        proc.wait()
        raise


def git_commit() -> str | None:
    """The repository's HEAD commit, short (uncommitted edits: the fingerprint's
    ``git_dirty``)."""
    from bench.fingerprint import git_state

    commit, _ = git_state()
    return commit[:7] if commit else None


def cpu_model() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers depend on besides the software: CPUs, load, thread settings."""
    from bench.fingerprint import cores

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": cores(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": load,
    }
