"""SmolLM2 through the plugin generates what vanilla vLLM CPU generates (float32, greedy).

Both runs are fresh processes; vanilla is the same install with VLLM_ASCEND_PLATFORM=off.
Tokens must match exactly. Where they diverge, the divergence must be a near-tie: the
two candidates' logprobs differ by < 1e-3 in the plugin's own distribution; the test
reports the first divergence either way. Logprobs of matching tokens agree to < 1e-3.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import PYTHON, REPO, vllm_env

pytestmark = pytest.mark.e2e

TOLERANCE = 1e-3
ASCEND_LAYERS = {
    "vllm_ascend.ops.layernorm.AscendRMSNorm",
    "vllm_ascend.ops.rotary_embedding.AscendRotaryEmbedding",
    "vllm_ascend.ops.activation.AscendSiluAndMul",
}


def _generate(model, tmp_path, name: str, eager: bool, **env) -> dict:
    out = tmp_path / f"{name}.json"
    # vLLM's compile-cache key does not cover the platform plugin: give each backend its
    # own cache so vanilla can never replay a graph compiled with the plugin's layers.
    env["VLLM_CACHE_ROOT"] = str(tmp_path / f"vllm-cache-{name}")
    cmd = [PYTHON, "-m", "tests.e2e.generate", "--model", str(model), "--out", str(out)]
    if eager:
        cmd.append("--eager")
    proc = subprocess.run(
        cmd, cwd=REPO, env=vllm_env(**env), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{name} run failed:\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def compare(plugin: dict, vanilla: dict) -> tuple[list[str], float]:
    """Failures (first divergence per prompt that is not a near-tie) and max logprob diff."""
    failures, worst = [], 0.0
    for p, v in zip(plugin["results"], vanilla["results"]):
        for pos, (tp, tv) in enumerate(zip(p["token_ids"], v["token_ids"])):
            lp_plugin, lp_vanilla = p["top"][pos], v["top"][pos]
            if tp == tv:
                worst = max(worst, abs(lp_plugin[str(tp)] - lp_vanilla[str(tv)]))
                continue
            gap = lp_plugin[str(tp)] - lp_plugin.get(str(tv), float("-inf"))
            note = (
                f"prompt {p['prompt']!r}: first divergence at token {pos}: plugin {tp} "
                f"vs vanilla {tv}, plugin logprob gap between them {gap:.2e}"
            )
            print(note)
            if gap >= TOLERANCE:
                failures.append(note)
            break
    return failures, worst


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_plugin_matches_vanilla(smollm2_dir, tmp_path, eager):
    plugin = _generate(smollm2_dir, tmp_path, "plugin", eager)
    vanilla = _generate(smollm2_dir, tmp_path, "vanilla", eager, VLLM_ASCEND_PLATFORM="off")

    # The plugin really took over (vLLM silently falls back to its own platform otherwise).
    assert plugin["platform"] == "vllm_ascend.platform.cpu.AscendCPUPlatform"
    assert ASCEND_LAYERS <= set(plugin["layers"]), plugin["layers"]
    assert vanilla["platform"] == "vllm.platforms.cpu.CpuPlatform"
    assert not ASCEND_LAYERS & set(vanilla["layers"]), vanilla["layers"]

    failures, worst = compare(plugin, vanilla)
    print(f"max |logprob difference| over matching tokens: {worst:.2e}")
    assert not failures, "\n".join(failures)
    assert worst < TOLERANCE
    assert all(len(r["token_ids"]) == 32 for r in plugin["results"])
