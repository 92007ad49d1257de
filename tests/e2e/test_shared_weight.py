"""Shared-weight linear layers (``layer_sharding``) served by vLLM with DP2 (gloo, CPU).

Tiny checkpoints (``vllm_ascend.tools.tiny_model``, 4 layers so that a rank stores 2 of a
series' layers plus its ring buffer): Qwen3-MoE with ``o_proj`` sharded, DeepSeek-V3 (MLA)
with ``o_proj`` and ``q_b_proj``. Runs use ``tests.e2e.moe_generate`` (vLLM's offline DP
recipe, one process per DP rank, 5 prompts x 16 greedy tokens, float32), each a fresh
process tree; ``kv_b_proj`` is refused by name (``shared_weight.config``).

- greedy tokens of every prompt identical to the same layout unsharded, compiled and eager
  (logprobs within 1e-4: a sharded float layer computes with ``F.linear`` where vLLM's CPU
  path uses a oneDNN GEMM; W8A8_DYNAMIC layers run the same int8 kernel either way);
- per DP rank, the live tensor bytes (model + ring buffers, from the worker) are lower than
  unsharded, on the quantized checkpoint (``-w4a8``: experts W4A8_DYNAMIC, the other linears
  W8A8_DYNAMIC, whose int8 weights stay tensors). vLLM's CPU path moves an unquantized
  weight into a oneDNN handle and leaves an empty parameter, so for the float checkpoints
  unsharded tensor bytes undercount and only the RSS is printed (at this size, ~100 KiB
  per o_proj, below the RSS noise);
- a suffix the model lacks stops vLLM with the model's linear suffixes in the error.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import PYTHON, REPO, quantize_w4a8, vllm_env
from tests.e2e.test_moe_models import TWO_RANKS_BIND

pytestmark = pytest.mark.e2e

MAX_TOKENS = 16
LAYERS = 4
SERIES = {"qwen3_moe": ["o_proj"], "deepseek_v3": ["o_proj", "q_b_proj"]}
LAYOUTS = {"dp2_ep": ["--dp", "2", "--ep"]}


def sharding(layers: list[str], prefetch_step: int = 1) -> str:
    return json.dumps({"ascend": {"layer_sharding": {"layers": layers,
                                                     "prefetch_step": prefetch_step}}})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vllm_ascend.tools.tiny_model import generate

    root, made = tmp_path_factory.mktemp("tiny-sw"), {}

    def get(name: str):
        if name not in made:
            arch, _, quant = name.partition("-")
            made[name] = (quantize_w4a8(get(arch), root / name) if quant else
                          generate(arch, root / arch, seed=0, layers=LAYERS))
        return made[name]

    return get


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    root, done = tmp_path_factory.mktemp("sw-runs"), {}

    def get(arch: str, name: str, *flags: str) -> dict:
        key = (arch, name)
        if key not in done:
            out = root / f"{arch}-{name}.json"
            env = {"VLLM_CACHE_ROOT": str(root / f"cache-{arch}-{name}"), **TWO_RANKS_BIND}
            cmd = [PYTHON, "-m", "tests.e2e.moe_generate", "--model", str(tiny(arch)),
                   "--out", str(out), "--max-tokens", str(MAX_TOKENS), *flags]
            proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(**env), capture_output=True,
                                  text=True, timeout=1500)
            log = proc.stdout + proc.stderr  # vLLM logs (worker tracebacks too) go to stdout
            assert proc.returncode == 0, f"{arch} {name} failed:\n{log[-8000:]}"
            done[key] = json.loads(out.read_text())
        return done[key]

    return get


def check_sharded(model: str, layout: str, mode: str, runs) -> None:
    arch, quantized = model.partition("-")[0], "-" in model
    flags = LAYOUTS[layout] + (["--eager"] if mode == "eager" else [])
    plain = runs(model, f"{layout}-{mode}", *flags)
    sharded = runs(model, f"{layout}-{mode}-sharded", *flags, "--additional-config",
                   sharding(SERIES[arch]))
    worst = 0.0
    for r, ref in zip(sharded["results"], plain["results"]):
        assert r["token_ids"] == ref["token_ids"], r["prompt"]
        for lp, lp_ref, t in zip(r["top"], ref["top"], r["token_ids"]):
            worst = max(worst, abs(lp[str(t)] - lp_ref[str(t)]))
    assert len(sharded["results"]) == 5 and worst < 1e-4, worst
    for rank, (mem, ref) in enumerate(zip(sharded["memory"], plain["memory"])):
        print(f"{model} {layout} {mode} DP rank {rank}: tensors {ref['model']} -> "
              f"{mem['model']} + ring {mem['ring']} B ({mem['series']} B in sharded layers); "
              f"RSS {ref['rss'] / 2**20:.1f} -> {mem['rss'] / 2**20:.1f} MiB; max |dlogprob| "
              f"{worst:.1e}")
        assert ref["ring"] == 0 and mem["ring"] > 0
        if quantized:
            assert mem["model"] + mem["ring"] < ref["model"]


def test_qwen3_moe_w8a8_dp2_ep_eager(runs):
    check_sharded("qwen3_moe-w4a8", "dp2_ep", "eager", runs)


@pytest.mark.slow
@pytest.mark.parametrize("model, layout, mode", [
    ("qwen3_moe", "dp2_ep", "eager"),
    ("qwen3_moe", "dp2_ep", "compiled"),
    ("deepseek_v3", "dp2_ep", "eager"),
    ("deepseek_v3", "dp2_ep", "compiled"),
    ("deepseek_v3-w4a8", "dp2_ep", "eager"),
])
def test_sharded_tokens_match_unsharded(runs, model, layout, mode):
    check_sharded(model, layout, mode, runs)


@pytest.mark.slow
def test_unknown_suffix_lists_the_models_linear_suffixes(tiny, tmp_path):
    cmd = [PYTHON, "-m", "tests.e2e.moe_generate", "--model", str(tiny("qwen3_moe")),
           "--out", str(tmp_path / "bad.json"), "--eager", "--dp", "2", "--ep",
           "--additional-config", sharding(["q_b_proj"])]
    proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(**TWO_RANKS_BIND), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode != 0
    # vLLM's engine processes log the root cause to stdout, the client's traceback to stderr
    log = proc.stdout + proc.stderr
    line = next((ln for ln in log.splitlines() if "names no linear layer" in ln), "")
    assert "'q_b_proj' names no linear layer of this model; its linear layer suffixes: " in line, \
        log[-6000:]
    assert "o_proj" in line and "qkv_proj" in line, line
