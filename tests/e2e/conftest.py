"""Fixtures for the end-to-end tests: the prepared default model and a vLLM-friendly env."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
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
    if "VLLM_CACHE_ROOT" in overrides:
        share_modelinfos(Path(overrides["VLLM_CACHE_ROOT"]))
    return env


_MODELINFOS: Path | None = None


def share_modelinfos(cache_root: Path) -> None:
    """Point ``cache_root/modelinfos`` at one directory shared by this pytest process.

    The e2e tests give each run its own ``VLLM_CACHE_ROOT`` (vLLM's compile cache key ignores
    the platform plugin), but vLLM also keeps there its model-class inspection results, and a
    cold one costs each engine start ~10 s (a subprocess importing the model). Those entries
    are keyed by the hash of the model's source file and written atomically, so sharing them
    is safe; the compile caches stay separate."""
    global _MODELINFOS
    if _MODELINFOS is None:
        _MODELINFOS = Path(tempfile.mkdtemp(prefix="vllm-ascend-modelinfos-"))
        atexit.register(shutil.rmtree, _MODELINFOS, ignore_errors=True)
    link = cache_root / "modelinfos"
    if not link.exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        link.symlink_to(_MODELINFOS, target_is_directory=True)


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
