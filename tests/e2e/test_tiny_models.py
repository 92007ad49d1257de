"""The tiny random-weight checkpoints of ``vllm_ascend.tools.tiny_model`` served by vLLM.

For each architecture (Qwen3 dense, Qwen3-MoE, DeepSeek-V3 with MLA + noaux_tc MoE) a fresh
checkpoint is written, then vLLM generates greedily (float32, eager) in two fresh processes
through the plugin: both runs must succeed and produce the same tokens.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import PYTHON, REPO, vllm_env
from vllm_ascend.tools.tiny_model import ARCHS, generate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_TOKENS = 8
ASCEND_CPU_PLATFORM = "vllm_ascend.platform.cpu.AscendCPUPlatform"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: generate(arch, root / arch, seed=0) for arch in ARCHS}


def _generate(model, out, **env) -> dict:
    cmd = [PYTHON, "-m", "tests.e2e.generate", "--model", str(model), "--out", str(out)]
    cmd += ["--eager", "--max-tokens", str(MAX_TOKENS)]
    proc = subprocess.run(
        cmd, cwd=REPO, env=vllm_env(**env), capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"{out.name} failed:\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_generates_deterministically(tiny_dirs, tmp_path, arch):
    runs = [_generate(tiny_dirs[arch], tmp_path / f"{arch}-{i}.json") for i in range(2)]
    for run in runs:
        assert run["platform"] == ASCEND_CPU_PLATFORM
        assert all(len(r["token_ids"]) == MAX_TOKENS for r in run["results"])
    first, second = ([r["token_ids"] for r in run["results"]] for run in runs)
    print(f"{arch}: {first}")
    assert first == second
