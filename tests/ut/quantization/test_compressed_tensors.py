"""compressed-tensors configs (built with the compressed_tensors library's own classes) mapped
onto the plugin's schemes, and llm-compressor tensors converted at load (vs float64)."""

from __future__ import annotations

import json

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig
from compressed_tensors.quantization import QuantizationScheme as Scheme
from hypothesis import given
from hypothesis import strategies as st

from tests.ut.quantization.layers import oracle
from vllm_ascend.quantization.compressed_tensors_config import (
    CT_NAME,
    AscendCompressedTensorsConfig,
    quant_type_of,
)
from vllm_ascend.quantization.errors import AscendQuantizationError, UnsupportedSchemeError
from vllm_ascend.quantization.wrappers import AscendLinearMethod

MLP = "model.layers.0.mlp"
INT8_CH = QuantizationArgs(num_bits=8, strategy="channel", symmetric=True)
INT8_TENSOR_W = QuantizationArgs(num_bits=8, strategy="tensor", symmetric=True)
TOKEN = QuantizationArgs(num_bits=8, strategy="token", dynamic=True, symmetric=True)
STATIC_ASYM = QuantizationArgs(num_bits=8, strategy="tensor", symmetric=False)
INT4_G32 = QuantizationArgs(num_bits=4, strategy="group", group_size=32, symmetric=True)


def ct_config(groups: dict[str, Scheme], ignore=(), fmt="int-quantized"):
    data = QuantizationConfig(config_groups=groups, ignore=list(ignore), format=fmt,
                              quantization_status="compressed").model_dump()
    data.update(total_num_heads=4, total_num_kv_heads=2)  # vLLM adds these
    config = AscendCompressedTensorsConfig.from_config(json.loads(json.dumps(data)))
    config.packed_modules_mapping = {"gate_up_proj": ["gate_proj", "up_proj"]}
    return config


@pytest.mark.parametrize("weights,acts,expected", [
    (INT8_CH, QuantizationArgs(num_bits=8, strategy="tensor"), "W8A8"),
    (INT8_TENSOR_W, STATIC_ASYM, "W8A8"),
    (INT8_CH, TOKEN, "W8A8_DYNAMIC"),
    (INT4_G32, None, "W4A16"),
    (QuantizationArgs(num_bits=8, strategy="channel"), None, "W8A16"),
    (QuantizationArgs(num_bits=4, strategy="group", group_size=128), TOKEN, "W4A8_DYNAMIC"),
])
def test_mapping(weights, acts, expected):
    assert quant_type_of(Scheme(targets=["Linear"], weights=weights,
                                input_activations=acts)) == expected


@pytest.mark.parametrize("weights,acts", [
    (QuantizationArgs(num_bits=8, type="float", strategy="channel"), None),  # fp8
    (QuantizationArgs(num_bits=8, strategy="channel", symmetric=False), None),
    (INT8_CH, QuantizationArgs(num_bits=8, strategy="token", dynamic=True, symmetric=False)),
    (QuantizationArgs(num_bits=2, strategy="channel"), None),
])
def test_unsupported_mapping(weights, acts):
    with pytest.raises(UnsupportedSchemeError, match="no Ascend equivalent"):
        quant_type_of(Scheme(targets=["Linear"], weights=weights, input_activations=acts))


def test_override_and_registration_name(tmp_path):
    cfg = {"quant_method": "compressed-tensors"}
    assert AscendCompressedTensorsConfig.override_quantization_method(cfg, None) == CT_NAME
    assert AscendCompressedTensorsConfig.override_quantization_method(
        cfg, "compressed-tensors") == CT_NAME
    assert AscendCompressedTensorsConfig.override_quantization_method(cfg, "awq") is None
    assert AscendCompressedTensorsConfig.get_name() == CT_NAME


def test_vllm_model_config_picks_the_plugin_config(tmp_path, vllm_dist):
    from vllm.config import ModelConfig

    from tests.ut.quantization.synth import build_checkpoint

    qc = QuantizationConfig(config_groups={"g": Scheme(targets=["Linear"], weights=INT8_CH,
                                                       input_activations=TOKEN)},
                            ignore=["lm_head"], format="int-quantized").model_dump()
    build_checkpoint(tmp_path, quantization_config=json.loads(json.dumps(qc)),
                     description=False)
    mc = ModelConfig(model=str(tmp_path), dtype="float32", skip_tokenizer_init=True,
                     max_model_len=64)
    assert mc.quantization == CT_NAME


def test_invalid_config_is_a_package_error():
    with pytest.raises(AscendQuantizationError, match="compressed-tensors.*invalid"):
        AscendCompressedTensorsConfig.from_config({"config_groups": {"g": {"targets": 3}}})
    with pytest.raises(UnsupportedSchemeError, match="transform_config"):
        AscendCompressedTensorsConfig.from_config(
            {"config_groups": {}, "transform_config": {"config_groups": {"r": {}}}})


def layer_for(config, prefix="gate_up", k=64, widths=(16, 8), bias=False):
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    if prefix == "gate_up":
        return MergedColumnParallelLinear(k, list(widths), bias=bias, quant_config=config,
                                          prefix=f"{MLP}.gate_up_proj", return_bias=False)
    return RowParallelLinear(k, widths[0], bias=bias, quant_config=config,
                             prefix=f"{MLP}.down_proj", return_bias=False)


def test_ignore_targets_and_shard_agreement(vllm_ctx):
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    scheme = Scheme(targets=["Linear"], weights=INT8_CH, input_activations=TOKEN)
    config = ct_config({"g": scheme}, ignore=[f"{MLP}.down_proj"])
    assert isinstance(layer_for(config).quant_method, AscendLinearMethod)
    assert isinstance(layer_for(config, "down").quant_method, UnquantizedLinearMethod)
    split = ct_config({"a": Scheme(targets=["re:.*gate_proj"], weights=INT8_CH,
                                   input_activations=TOKEN),
                       "b": Scheme(targets=["re:.*up_proj"], weights=INT4_G32)})
    with pytest.raises(AscendQuantizationError, match="gate_proj' is W8A8_DYNAMIC but .*"
                                                      "up_proj' is W4A16"):
        layer_for(split)
    with pytest.raises(AscendQuantizationError, match="different quantization schemes"):
        layer_for(ct_config({"g": scheme}, ignore=[f"{MLP}.up_proj"]))
    w4a8 = ct_config({"g": Scheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, strategy="group", group_size=32), input_activations=TOKEN)})
    assert layer_for(w4a8).quant_method.scheme.quant_type == "W4A8_DYNAMIC"


def int8_weights(gen, n, k, strategy):
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    if strategy == "tensor":
        scale = (w.abs().max() / 127).reshape(1)
        q = torch.round(w / scale).clamp(-127, 127)
        return q.to(torch.int8), scale, q.double() * scale.double()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127)
    q = torch.round(w / scale).clamp(-127, 127)
    return q.to(torch.int8), scale, q.double() * scale.double()


def load_shards(layer, tensors_per_shard):
    params = dict(layer.named_parameters())
    for shard, tensors in enumerate(tensors_per_shard):
        for name, tensor in tensors.items():
            params[name].weight_loader(params[name], tensor, shard)
    layer.quant_method.process_weights_after_loading(layer)


@pytest.mark.usefixtures("vllm_ctx")
@given(m=st.integers(1, 64), seed=st.integers(0, 2**16), strategy=st.sampled_from(
    ["channel", "tensor"]), static=st.booleans(), bias=st.booleans())
def test_int8_adapters_match_float64(m, seed, strategy, static, bias):
    gen = torch.Generator().manual_seed(seed)
    weights = INT8_CH if strategy == "channel" else INT8_TENSOR_W
    acts = STATIC_ASYM if static else TOKEN
    layer = layer_for(ct_config({"g": Scheme(targets=["Linear"], weights=weights,
                                             input_activations=acts)}), bias=bias)
    s_x, zp = 0.03, -5.0
    shards, deqs, deq_scale = [], [], []
    for width in (16, 8):
        q, scale, deq = int8_weights(gen, width, 64, strategy)
        tensors = {"weight": q, "weight_scale": scale}
        if static:
            tensors.update(input_scale=torch.tensor([s_x]),
                           input_zero_point=torch.tensor([zp]).to(torch.int8))
        shards.append(tensors)
        deqs.append(deq)
        deq_scale.append((torch.tensor(s_x) * scale.reshape(-1)).expand(width))
    b = torch.randn(24, generator=gen) * 0.1 if bias else None
    if bias:
        layer.bias.data.copy_(b)
    load_shards(layer, shards)
    x = torch.randn(m, 64, generator=gen)
    quant_type = "W8A8" if static else "W8A8_DYNAMIC"
    ref, tol = oracle(quant_type, x, torch.cat(deqs), b, calib=(s_x, zp),
                      deq=torch.cat(deq_scale))
    assert bool(((layer(x).double() - ref).abs() <= tol).all())


@pytest.mark.usefixtures("vllm_ctx")
@pytest.mark.parametrize("bits,fmt", [(4, "pack-quantized"), (8, "pack-quantized"),
                                      (8, "int-quantized")])
@given(m=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_weight_only_adapters_match_float64(bits, fmt, m, seed):
    gen = torch.Generator().manual_seed(seed)
    args = QuantizationArgs(num_bits=bits, strategy="group", group_size=32, symmetric=True)
    layer = layer_for(ct_config({"g": Scheme(targets=["Linear"], weights=args)}, fmt=fmt))
    qmax = 2 ** (bits - 1) - 1
    shards, deqs = [], []
    for width in (16, 8):
        w = torch.randn(width, 64, generator=gen)
        scale = w.reshape(width, 2, 32).abs().amax(dim=2) / qmax
        q = torch.round(w.reshape(width, 2, 32) / scale[..., None]).clamp(-qmax - 1, qmax)
        q = q.reshape(width, 64).to(torch.int8)
        deqs.append((q.reshape(width, 2, 32).double() * scale.double()[..., None])
                    .reshape(width, 64))
        if fmt == "pack-quantized":
            shards.append({"weight_packed": pack_to_int32(q, bits), "weight_scale": scale,
                           "weight_shape": torch.tensor([width, 64])})
        else:
            shards.append({"weight": q, "weight_scale": scale})
    load_shards(layer, shards)
    assert layer.weight.dtype == (torch.int32 if bits == 4 else torch.int8)
    x = torch.randn(m, 64, generator=gen)
    ref, tol = oracle("W4A16" if bits == 4 else "W8A16", x, torch.cat(deqs))
    assert bool(((layer(x).double() - ref).abs() <= tol).all())
