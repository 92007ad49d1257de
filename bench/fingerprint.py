"""One fingerprint for every suite's result file: what the numbers depend on.

``fingerprint(config)`` -> ``{cpu_model, cpu_flags, cores, torch_version, vllm_version,
plugin_version, git_commit, git_dirty, config}``. ``bench compare`` refuses two files whose
``cpu_model``, ``cpu_flags``, ``cores`` or ``config`` differ (``compare.fingerprint_diff``);
the versions and the commit are what a comparison is usually about, so they are only shown.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from importlib import metadata
from pathlib import Path

from bench import REPO_ROOT, cpu_model

#: ISA flags (``/proc/cpuinfo`` names) that select or speed up kernels: torch's and oneDNN's
#: dispatch, csrc's AVX-512 grouped matmul, VNNI/AMX int8. Others (e.g. ``sse2``) are noise.
KERNEL_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx512_vbmi", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    # aarch64 (``Features`` line)
    "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm",
})
#: Option names never part of a suite's configuration: where results go and how chatty.
NOT_CONFIG = frozenset({"run", "command", "out", "verbose", "min_ratio", "suites"})


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The :data:`KERNEL_FLAGS` this CPU has, sorted (from ``cpuinfo``'s text, else
    /proc/cpuinfo's first ``flags``/``Features`` line; [] when unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            return sorted(set(line.split(":", 1)[1].split()) & KERNEL_FLAGS)
    return []


def cores() -> int:
    """CPUs this process may run on (affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def version(dist: str) -> str | None:
    """An installed distribution's version without importing it (vLLM imports slowly)."""
    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def git_state(root: Path = REPO_ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, full; whether tracked files differ from it) or (None, None) outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None, None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip())


def _jsonable(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def config_from_args(args: argparse.Namespace, exclude=()) -> dict:
    """A suite's configuration: its parsed options minus :data:`NOT_CONFIG` and ``exclude``."""
    skip = NOT_CONFIG | set(exclude)
    return {k: _jsonable(v) for k, v in sorted(vars(args).items())
            if k not in skip and not callable(v)}


def fingerprint(config: dict) -> dict:
    """The fingerprint of a run of a suite with ``config`` on this machine and checkout."""
    commit, dirty = git_state()
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": cores(),
        "torch_version": version("torch"),
        "vllm_version": version("vllm"),
        "plugin_version": version("vllm-ascend"),
        "git_commit": commit,
        "git_dirty": dirty,
        "config": _jsonable(config),
    }
