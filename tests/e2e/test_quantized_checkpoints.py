"""Quantized checkpoints through a real vLLM engine on the plugin (CPU reference backend).

The checkpoints are the unit tests' synthetic ModelSlim Llama (``tests/ut/quantization/
synth.py``): hidden 64, 2 layers, W8A8_DYNAMIC / W8A8 / W8A16 / FLOAT layers, no tokenizer.

- ``quantization_config: {"quant_method": "ascend"}`` in config.json and ``--quantization
  ascend`` both resolve to the plugin's config and its schemes;
- a W8A16-only checkpoint generates what vanilla vLLM generates on the dequantized float
  weights (weight-only quantization is exact up to fp32 rounding);
- a description-only checkpoint (no quantization_config, no flag) is detected: the
  platform's ``check_and_update_config`` calls ``maybe_enable_ascend_quantization``.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import PYTHON, REPO, vllm_env
from tests.e2e.test_smollm2_parity import compare
from tests.ut.quantization.synth import DEFAULT_TYPES, build_checkpoint, write_float_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOLERANCE = 1e-3
EXPECTED = {  # module -> quant method for DEFAULT_TYPES
    "model.layers.0.self_attn.qkv_proj": "AscendLinearMethod:W8A8_DYNAMIC",
    "model.layers.0.self_attn.o_proj": "AscendLinearMethod:W8A8",
    "model.layers.0.mlp.gate_up_proj": "AscendLinearMethod:W8A16",
    "model.layers.0.mlp.down_proj": "UnquantizedLinearMethod",
    "model.layers.1.self_attn.qkv_proj": "AscendLinearMethod:W8A8",
    "model.layers.1.mlp.down_proj": "AscendLinearMethod:W8A8_DYNAMIC",
}


def run(model, tmp_path, name: str, quantization: str | None = None, **env) -> dict:
    out = tmp_path / f"{name}.json"
    cmd = [PYTHON, "-m", "tests.e2e.quant_generate", "--model", str(model), "--out", str(out)]
    if quantization:
        cmd += ["--quantization", quantization]
    proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(**env), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{name} run failed:\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def check_quantized(report: dict) -> None:
    assert report["quantization"] == "ascend"
    for module, method in EXPECTED.items():
        assert report["methods"][module] == method, (module, report["methods"])
    for result in report["results"]:
        assert len(result["token_ids"]) == 16
        assert all(abs(lp) < 1e4 for pos in result["top"] for lp in pos.values())


def test_config_json_quant_method_ascend(tmp_path):
    model = tmp_path / "ckpt"
    build_checkpoint(model, quantization_config={"quant_method": "ascend"})
    check_quantized(run(model, tmp_path, "stub"))


def test_quantization_flag(tmp_path):
    model = tmp_path / "ckpt"
    build_checkpoint(model)
    check_quantized(run(model, tmp_path, "flag", quantization="ascend"))


def test_weight_only_matches_vanilla_on_dequantized_weights(tmp_path):
    types = {key: ("W8A16" if value != "FLOAT" else value) for key, value in
             DEFAULT_TYPES.items()}
    quant, dense = tmp_path / "w8a16", tmp_path / "dense"
    dequant = build_checkpoint(quant, types, quantization_config={"quant_method": "ascend"})
    write_float_checkpoint(dense, quant, dequant)
    plugin = run(quant, tmp_path, "plugin")
    vanilla = run(dense, tmp_path, "vanilla", VLLM_ASCEND_PLATFORM="off")
    assert plugin["methods"]["model.layers.0.self_attn.qkv_proj"] == "AscendLinearMethod:W8A16"
    failures, worst = compare(plugin, vanilla)
    assert not failures, "\n".join(failures)
    assert worst < TOLERANCE


def test_description_only_checkpoint_is_detected(tmp_path):
    """Needs the platform's check_and_update_config to call
    ``vllm_ascend.quantization.detect.maybe_enable_ascend_quantization(vllm_config)``."""
    model = tmp_path / "ckpt"
    build_checkpoint(model)
    check_quantized(run(model, tmp_path, "detect"))
