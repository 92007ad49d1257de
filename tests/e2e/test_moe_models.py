"""Tiny MoE models through the plugin's MoE path, single process and multi-process (CPU, gloo).

Checkpoints: ``vllm_ascend.tools.tiny_model`` (Qwen3-MoE: 16 experts top-4 softmax;
DeepSeek-V3: MLA, first layer dense, 64 experts noaux_tc grouped top-8, one shared expert).
Generation: ``tests.e2e.moe_generate``, 5 prompts x 16 greedy tokens, float32, each run a
fresh process tree.

- single process: plugin vs vanilla vLLM CPU (``VLLM_ASCEND_PLATFORM=off``), compiled and
  eager; the plugin run must use the plugin's MoE runner and float method;
- multi-process (vLLM's own flags, gloo): TP2, TP2 + expert parallel, DP2 + expert parallel
  (vLLM's offline DP recipe: one process per DP rank), compared with the single-process
  plugin run. Vanilla vLLM CPU crashes on TP2 + EP (segfault in ``cpu_fused_moe``) and fails
  on DP2 MoE (its CPU communicator has no ``all_gatherv``);
- the ``moe_comm_method`` override forces allgather / all2allv under TP2 + EP (unforced,
  these small batches all take mc2);
- W4A8_DYNAMIC checkpoints (``vllm_ascend.tools.quantize``, group size 32 so that TP2 can
  split the experts' intermediate size 64; other linears W8A8_DYNAMIC): the experts run
  through the quant method's ``apply_experts``. Every layout must match the single-process
  run like the float models. Under TP, row-parallel W8A8_DYNAMIC linears and TP-sharded
  experts see one slice of each row: they quantise it with the whole row's per-token scale
  (``quantization.methods._tp_quant``, one all-reduce-max per layer), so the int8 values
  are the single process's (with per-slice scales, 2-3 of 5 prompts diverged at near-ties).

DeepSeek-V3 plugin vs vanilla is a non-strict xfail: the plugin's MoE alone is not the
cause (with only the MoE classes replaced, and torch's fill of uninitialised memory, the
run is token-identical to vanilla with 9.5e-7 logprob difference), but the plugin's other
replacements (rotary, norms, activation) change float32 rounding, and this tiny model's
routing (64 sigmoid-scored experts, grouped top-8) turns that into 1e-3..1e-2 logprob
differences. Vanilla vLLM CPU itself is not reproducible run to run on it (MLA path).

Parity rule (as in ``test_smollm2_parity``): tokens equal, or the first divergence is a
near-tie (< 1e-3 logprob gap in the run under test); matching tokens' logprobs within 1e-3.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import PYTHON, REPO, quantize_w4a8, vllm_env
from tests.e2e.test_smollm2_parity import TOLERANCE

pytestmark = pytest.mark.e2e

MAX_TOKENS = 16
PLUGIN_MOE = {
    "vllm_ascend.ops.fused_moe.vllm_integration.AscendMoERunner",
    "vllm_ascend.ops.fused_moe.vllm_integration.AscendUnquantizedFusedMoEMethod",
}
PLUGIN_QUANT_MOE = {
    "vllm_ascend.ops.fused_moe.vllm_integration.AscendMoERunner",
    "vllm_ascend.quantization.wrappers.AscendFusedMoEMethod",
}
VANILLA_MOE = {
    "vllm.model_executor.layers.fused_moe.runner.moe_runner.MoERunner",
    "vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method.UnquantizedFusedMoEMethod",
}
#: One core per rank on this 2-core, single-NUMA machine (TP: per TP rank; DP: per DP rank).
TWO_RANKS_BIND = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
LAYOUTS = {
    "tp2": ["--tp", "2"],
    "tp2_ep": ["--tp", "2", "--ep"],
    "dp2_ep": ["--dp", "2", "--ep"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``arch`` or ``arch-w4a8`` -> checkpoint dir, written on first use."""
    from vllm_ascend.tools.tiny_model import generate

    root, made = tmp_path_factory.mktemp("tiny-moe"), {}

    def get(name: str):
        if name not in made:
            arch, _, quant = name.partition("-")
            if not quant:
                made[name] = generate(arch, root / arch, seed=0)
            else:
                made[name] = quantize_w4a8(get(arch), root / name)
        return made[name]

    return get


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """(model, name, *flags) -> the run's JSON; each distinct run happens once per module."""
    root, done = tmp_path_factory.mktemp("moe-runs"), {}

    def get(arch: str, name: str, *flags: str, **env: str) -> dict:
        key = (arch, name)
        if key not in done:
            out = root / f"{arch}-{name}.json"
            # The compile cache key ignores the platform plugin: one cache per run.
            env["VLLM_CACHE_ROOT"] = str(root / f"cache-{arch}-{name}")
            cmd = [PYTHON, "-m", "tests.e2e.moe_generate", "--model", str(tiny(arch)),
                   "--out", str(out), "--max-tokens", str(MAX_TOKENS), *flags]
            proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(**env), capture_output=True,
                                  text=True, timeout=1500)
            assert proc.returncode == 0, f"{arch} {name} failed:\n{proc.stderr[-8000:]}"
            done[key] = json.loads(out.read_text())
        return done[key]

    return get


def assert_parity(run: dict, reference: dict, tolerance: float = TOLERANCE) -> None:
    """Tokens equal, or the first divergence a near-tie (gap < tolerance in ``run``'s own
    distribution); matching tokens' logprobs within tolerance."""
    failures, worst, same = [], 0.0, 0
    for r, ref in zip(run["results"], reference["results"]):
        same += r["token_ids"] == ref["token_ids"]
        for pos, (a, b) in enumerate(zip(r["token_ids"], ref["token_ids"])):
            lp = r["top"][pos]
            if a == b:
                worst = max(worst, abs(lp[str(a)] - ref["top"][pos][str(b)]))
                continue
            gap = lp[str(a)] - lp.get(str(b), float("-inf"))
            note = (f"prompt {r['prompt']!r}: first divergence at token {pos}: {a} vs {b}, "
                    f"logprob gap {gap:.2e}")
            print(note)
            if gap >= tolerance:
                failures.append(note)
            break
    print(f"identical prompts: {same}/{len(run['results'])}; max |logprob difference| over "
          f"matching tokens: {worst:.2e}; comm methods: {run.get('comm_methods')}")
    assert not failures, "\n".join(failures)
    assert worst < tolerance
    assert all(len(r["token_ids"]) == MAX_TOKENS for r in run["results"])


def assert_plugin_moe(run: dict, quantized: bool = False) -> None:
    assert run["platform"] == "vllm_ascend.platform.cpu.AscendCPUPlatform"
    assert set(run["moe"]) == (PLUGIN_QUANT_MOE if quantized else PLUGIN_MOE), run["moe"]
    assert run["comm_methods"], "no plugin comm method ran"


# ------------------------------------------------------------------------ single process


@pytest.mark.parametrize("mode", [
    "eager",
    pytest.param("compiled", marks=pytest.mark.slow),
])
@pytest.mark.parametrize("arch", [
    "qwen3_moe",
    pytest.param("deepseek_v3", marks=[pytest.mark.slow, pytest.mark.xfail(
        strict=False, reason="non-MoE replacements' rounding, amplified by this model's "
        "routing; see the module docstring")]),
])
def test_plugin_moe_matches_vanilla(runs, arch, mode):
    flags = ["--eager"] if mode == "eager" else []
    plugin = runs(arch, f"plugin-{mode}", *flags)
    vanilla = runs(arch, f"vanilla-{mode}", *flags, VLLM_ASCEND_PLATFORM="off")
    assert_plugin_moe(plugin)
    assert plugin["comm_methods"] == ["allgather"]  # one rank: the plain single-device MoE
    assert vanilla["platform"] == "vllm.platforms.cpu.CpuPlatform"
    assert set(vanilla["moe"]) == VANILLA_MOE, vanilla["moe"]
    assert_parity(plugin, vanilla)


# ------------------------------------------------------------------------- multi-process


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("model", ["qwen3_moe", "deepseek_v3", "qwen3_moe-w4a8",
                                   "deepseek_v3-w4a8"])
def test_multi_process_matches_single_process(runs, model, layout):
    quantized = model.endswith("-w4a8")
    single = runs(model, "plugin-eager", "--eager")
    multi = runs(model, f"plugin-{layout}", "--eager", *LAYOUTS[layout], **TWO_RANKS_BIND)
    assert_plugin_moe(single, quantized)
    assert_plugin_moe(multi, quantized)
    # Expert parallel: small steps (<= 256 tokens per rank) take the MC2 kernels.
    assert multi["comm_methods"] == (["mc2"] if layout.endswith("_ep") else ["allgather"])
    assert_parity(multi, single)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["allgather", "all2allv"])
def test_comm_override_under_tp2_ep(runs, method):
    single = runs("qwen3_moe", "plugin-eager", "--eager")
    config = json.dumps({"ascend": {"moe_comm_method": method}})
    multi = runs("qwen3_moe", f"plugin-tp2_ep-{method}", "--eager", *LAYOUTS["tp2_ep"],
                 "--additional-config", config, **TWO_RANKS_BIND)
    assert_plugin_moe(multi)
    assert multi["comm_methods"] == [method]
    assert_parity(multi, single)


@pytest.mark.slow
def test_unknown_comm_method_stops_vllm_with_the_registered_names(tiny, tmp_path):
    config = json.dumps({"ascend": {"moe_comm_method": "nope"}})
    cmd = [PYTHON, "-m", "tests.e2e.moe_generate", "--model", str(tiny("qwen3_moe")),
           "--out", str(tmp_path / "bad.json"), "--eager", "--additional-config", config]
    proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode != 0
    assert "unknown MoE communication method 'nope'; registered: all2allv, allgather, mc2" \
        in proc.stdout + proc.stderr
