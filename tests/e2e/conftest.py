"""Fixtures for the end-to-end tests: the prepared default model and a vLLM-friendly env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from vllm_ascend.tools.prepare_model import prepare

    return prepare()


def vllm_env(**overrides: str) -> dict[str, str]:
    """Environment for a child vLLM process: small KV cache, pickle-able apply_model, repo importable."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("VLLM_ASCEND_PLATFORM", None)
    env.update(overrides)
    return env


PYTHON = sys.executable


def quantize_w4a8(src: Path, out: Path) -> Path:
    """A tiny MoE checkpoint with W4A8_DYNAMIC experts (group 32, so TP2 can split the
    experts' intermediate size 64; other linears W8A8_DYNAMIC), by the plugin's quantizer."""
    cmd = [PYTHON, "-m", "vllm_ascend.tools.quantize", "--model", str(src), "--scheme",
           "W4A8_DYNAMIC", "--group-size", "32", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"quantize {out.name} failed:\n{proc.stderr[-4000:]}"
    return out
