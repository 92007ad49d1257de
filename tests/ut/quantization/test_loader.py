"""A synthetic ModelSlim Llama checkpoint (W8A8_DYNAMIC, W8A8, W8A16 and FLOAT layers, fused
qkv / gate_up) loaded by vLLM's own model loader in this process: every layer's output
against float64 math on the dequantized weights, and bad tensors reported by name and file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.ut.quantization.layers import oracle
from tests.ut.quantization.synth import DEFAULT_TYPES, build_checkpoint, unfused_types
from vllm_ascend.quantization.errors import QuantTensorError
from vllm_ascend.quantization.wrappers import AscendLinearMethod

FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
UNFUSED = ("self_attn.o_proj", "mlp.down_proj")


def load_model(path: Path, quantization: str | None = None):
    """ModelConfig -> VllmConfig -> create the model -> load -> post-process (CPU)."""
    from vllm.config import LoadConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    from vllm.utils.torch_utils import set_default_torch_dtype

    mc = ModelConfig(model=str(path), dtype="float32", skip_tokenizer_init=True,
                     max_model_len=64, quantization=quantization)
    vc = VllmConfig(model_config=mc, load_config=LoadConfig())
    with set_current_vllm_config(vc):
        loader = get_model_loader(vc.load_config)
        with set_default_torch_dtype(torch.float32):
            model = loader.create_model(vc, mc)
        loader.load_weights(model, mc)
        process_weights_after_loading(model, mc, torch.device("cpu"))
    return model


def rewrite(path: Path, mutate) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    mutate(tensors)
    save_file(tensors, str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, vllm_dist):
    path = tmp_path_factory.mktemp("modelslim")
    dequant = build_checkpoint(path, quantization_config={"quant_method": "ascend"})
    return load_model(path), dequant


def test_every_layer_matches_float64(loaded):
    model, dequant = loaded
    modules = dict(model.named_modules())
    types = unfused_types(DEFAULT_TYPES)
    gen = torch.Generator().manual_seed(1)
    checked = set()
    for layer in range(2):
        base = f"model.layers.{layer}"
        for fused, parts in list(FUSED.items()) + [(u, (u,)) for u in UNFUSED]:
            module = modules[f"{base}.{fused}"]
            shard = f"{base}.{parts[0]}"
            quant_type = types[shard]
            w = torch.cat([dequant[f"{base}.{p}"] for p in parts])
            if quant_type == "FLOAT":
                assert not isinstance(module.quant_method, AscendLinearMethod)
            else:
                assert module.quant_method.scheme.quant_type == quant_type
            x = torch.randn(7, w.shape[1], generator=gen)
            calib = tuple(dequant[f"calib:{shard}"].tolist()) if quant_type == "W8A8" \
                else (0.02, 3.0)
            out = module(x)
            y = out[0] if isinstance(out, tuple) else out
            ref, tol = oracle(quant_type, x, w, calib=calib)
            assert bool(((y.double() - ref).abs() <= tol).all()), f"{base}.{fused}"
            checked.add(quant_type)
    assert checked == {"W8A8", "W8A8_DYNAMIC", "W8A16", "FLOAT"}


def test_explicit_quantization_flag(tmp_path, vllm_dist):
    """--quantization ascend with a plain config.json: vLLM finds the description file."""
    build_checkpoint(tmp_path)
    model = load_model(tmp_path, quantization="ascend")
    qkv = dict(model.named_modules())["model.layers.0.self_attn.qkv_proj"]
    assert qkv.quant_method.scheme.quant_type == "W8A8_DYNAMIC"


@pytest.mark.parametrize("tensor,value,words", [
    ("model.layers.1.self_attn.k_proj.deq_scale", float("nan"), "non-finite"),
    ("model.layers.0.mlp.up_proj.weight_scale", 0.0, "zero"),
    ("model.layers.1.mlp.down_proj.weight_scale", float("inf"), "non-finite"),
])
def test_bad_scale_names_tensor_and_file(tmp_path, vllm_dist, tensor, value, words):
    build_checkpoint(tmp_path, quantization_config={"quant_method": "ascend"})
    rewrite(tmp_path, lambda t: t[tensor].view(-1).__setitem__(5, value))
    with pytest.raises(QuantTensorError) as info:
        load_model(tmp_path)
    msg = str(info.value)
    assert f"'{tensor}' in model.safetensors" in msg and words in msg, msg


def test_misshapen_tensor(tmp_path, vllm_dist):
    build_checkpoint(tmp_path, quantization_config={"quant_method": "ascend"})
    name = "model.layers.0.self_attn.o_proj.quant_bias"
    rewrite(tmp_path, lambda t: t.__setitem__(name, t[name][:-3].clone()))
    with pytest.raises(QuantTensorError, match=rf"'{name}' in model.safetensors has shape "
                                               r"\(61,\)"):
        load_model(tmp_path)


def test_missing_shard_tensor(tmp_path, vllm_dist):
    build_checkpoint(tmp_path, quantization_config={"quant_method": "ascend"})
    name = "model.layers.1.self_attn.v_proj.input_offset"
    rewrite(tmp_path, lambda t: t.pop(name))
    with pytest.raises(QuantTensorError, match=rf"'{name}' is missing from the checkpoint"):
        load_model(tmp_path)


def test_missing_whole_tensor_named_by_vllm(tmp_path, vllm_dist):
    """A tensor absent for the whole layer is caught by vLLM's own completeness check
    (before post-processing); its message names the tensor."""
    build_checkpoint(tmp_path, quantization_config={"quant_method": "ascend"})
    name = "model.layers.0.self_attn.o_proj.deq_scale"
    rewrite(tmp_path, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_model(tmp_path)


def test_sharded_checkpoint_names_the_shard_file(tmp_path, vllm_dist):
    build_checkpoint(tmp_path, quantization_config={"quant_method": "ascend"})
    tensors = load_file(str(tmp_path / "model.safetensors"))
    bad = "model.layers.1.self_attn.q_proj.weight_scale"
    tensors[bad][0, 0] = float("nan")
    names = sorted(tensors)
    files = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    (tmp_path / "model.safetensors").unlink()
    weight_map = {}
    for file, keys in files.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / file))
        weight_map.update(dict.fromkeys(keys, file))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(QuantTensorError, match=rf"'{bad}' in {weight_map[bad]} holds"):
        load_model(tmp_path)
