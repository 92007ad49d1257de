"""AscendQuantConfig (registration, the three ways vLLM reaches it, per-layer methods), the
MoE wrapper's FLOAT-experts decision, and auto-detection of description-only checkpoints."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.ut.quantization.synth import build_checkpoint
from vllm_ascend.quantization import register
from vllm_ascend.quantization.compressed_tensors_config import CT_NAME
from vllm_ascend.quantization.description import DESCRIPTION_FILE, parse_description
from vllm_ascend.quantization.detect import (
    maybe_detect_ascend_quantization,
    maybe_enable_ascend_quantization,
)
from vllm_ascend.quantization.errors import (
    DescriptionError,
    QuantTensorError,
    UnsupportedSchemeError,
)
from vllm_ascend.quantization.methods.registry import registered_schemes
from vllm_ascend.quantization.modelslim_config import ASCEND, AscendQuantConfig
from vllm_ascend.quantization.wrappers import AscendFusedMoEMethod, AscendLinearMethod

L0 = "model.layers.0"


def config(**entries) -> AscendQuantConfig:
    cfg = AscendQuantConfig(parse_description({"group_size": 0, **entries}, "d.json"))
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    return cfg


def bare(cls, **attrs):
    """An instance of a vLLM layer class without running its constructor (isinstance only)."""
    layer = cls.__new__(cls)
    torch.nn.Module.__init__(layer)
    for key, value in attrs.items():
        setattr(layer, key, value)
    return layer


def test_register_is_idempotent():
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
    )

    register()
    register()
    assert QUANTIZATION_METHODS.count(ASCEND) == 1 and QUANTIZATION_METHODS.count(CT_NAME) == 1
    assert get_quantization_config(ASCEND) is AscendQuantConfig


def test_override_quantization_method():
    assert AscendQuantConfig.override_quantization_method({"quant_method": "ascend"}, None) \
        == ASCEND
    assert AscendQuantConfig.override_quantization_method({"quant_method": "awq"}, None) is None


def test_from_config_description_and_stub(tmp_path):
    build_checkpoint(tmp_path)
    data = json.loads((tmp_path / DESCRIPTION_FILE).read_text())
    direct = AscendQuantConfig.from_config(data)
    direct.maybe_update_config(str(tmp_path))
    assert direct.description.source == str(tmp_path / DESCRIPTION_FILE)
    stub = AscendQuantConfig.from_config({"quant_method": "ascend"})
    stub.maybe_update_config(str(tmp_path))
    assert stub.description.tensor_types == direct.description.tensor_types


def test_stub_without_description_file(tmp_path):
    stub = AscendQuantConfig.from_config({"quant_method": "ascend"})
    with pytest.raises(DescriptionError, match=rf"{tmp_path}/{DESCRIPTION_FILE}: not found"):
        stub.maybe_update_config(str(tmp_path))
    (tmp_path / DESCRIPTION_FILE).write_text("{not json")
    with pytest.raises(DescriptionError, match="cannot be read as JSON"):
        stub.maybe_update_config(str(tmp_path))


def test_linear_methods(vllm_ctx):
    from vllm.model_executor.layers.linear import (
        QKVParallelLinear,
        RowParallelLinear,
        UnquantizedLinearMethod,
    )

    cfg = config(**{f"{L0}.self_attn.{p}.weight": "W8A8_DYNAMIC"
                    for p in ("q_proj", "k_proj", "v_proj")},
                 **{f"{L0}.self_attn.o_proj.weight": "FLOAT"})
    qkv = QKVParallelLinear(32, 8, 4, 2, bias=False, quant_config=cfg,
                            prefix=f"{L0}.self_attn.qkv_proj")
    assert isinstance(qkv.quant_method, AscendLinearMethod)
    scheme = qkv.quant_method.scheme
    assert scheme.quant_type == "W8A8_DYNAMIC"
    assert scheme.shard_prefixes[2] == f"{L0}.self_attn.v_proj"
    o = RowParallelLinear(32, 32, bias=False, quant_config=cfg, prefix=f"{L0}.self_attn.o_proj")
    assert isinstance(o.quant_method, UnquantizedLinearMethod)


def test_attention_embedding_and_unknown_layers():
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    assert config().get_quant_method(bare(Attention), f"{L0}.self_attn.attn") is None
    with pytest.raises(UnsupportedSchemeError, match=r"'C8'.*registered"):
        config(kv_cache_type="C8").get_quant_method(bare(Attention), f"{L0}.self_attn.attn")
    assert config(**{"lm_head.weight": "FLOAT"}).get_quant_method(
        bare(ParallelLMHead), "lm_head") is None
    # int8 lm_heads load (tests/ut/tools/test_quantize.py::test_quantized_lm_head); others not
    with pytest.raises(UnsupportedSchemeError, match="accepted for the lm_head: 'FLOAT', 'W8A8_"):
        config(**{"lm_head.weight": "W4A16"}).get_quant_method(bare(ParallelLMHead), "lm_head")
    assert config().get_quant_method(torch.nn.LayerNorm(4), "x") is None


def test_vllm_mapper_renames_entries():
    from vllm.model_executor.models.utils import WeightsMapper

    cfg = config(**{"language_model.model.layers.0.mlp.down_proj.weight": "W8A16"})
    cfg.apply_vllm_mapper(WeightsMapper(orig_to_new_prefix={"language_model.": ""}))
    assert cfg.description.weight_type("model.layers.0.mlp.down_proj") == "W8A16"


# ------------------------------------------------------------------ MoE: FLOAT decision


def moe_layer(experts_type: str):
    from vllm.model_executor.layers.fused_moe import RoutedExperts

    entries = {f"{L0}.mlp.experts.{e}.{p}.weight": experts_type
               for e in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    layer = bare(RoutedExperts, moe_config=SimpleNamespace(has_bias=False))
    return layer, config(**entries).get_quant_method(layer, f"{L0}.mlp.experts")


def test_float_experts_run_unquantized():
    layer, method = moe_layer("FLOAT")
    assert isinstance(method, AscendFusedMoEMethod) and not method.quantized
    e, h, i = 2, 16, 8
    method.create_weights(layer, e, h, i, torch.float32, weight_loader=lambda *a: None)
    gen = torch.Generator().manual_seed(0)
    w13, w2 = torch.randn(e, 2 * i, h, generator=gen), torch.randn(e, h, i, generator=gen)
    layer.w13_weight.data.copy_(w13)
    layer.w2_weight.data.copy_(w2)
    method.process_weights_after_loading(layer)
    counts = torch.tensor([3, 2])
    x = torch.randn(6, h, generator=gen)  # the last row is past the total: 0
    y = method.apply_experts(layer, x, counts)
    expert = [0, 0, 0, 1, 1]
    for m, ex in enumerate(expert):
        hmid = w13[ex].double() @ x[m].double()
        act = torch.nn.functional.silu(hmid[:i]) * hmid[i:]
        assert torch.allclose(y[m].double(), w2[ex].double() @ act, atol=1e-4, rtol=1e-4)
    assert not bool(y[5].any())
    with pytest.raises(QuantTensorError, match="FLOAT experts take float rows"):
        method.apply_experts(layer, x.to(torch.int8), counts, torch.ones(6))


def test_quantized_experts_use_the_scheme_decided_per_call():
    assert ("W8A8_DYNAMIC", "moe") in registered_schemes()
    _, method = moe_layer("W8A8_DYNAMIC")
    assert method.quantized and method.scheme.quant_type == "W8A8_DYNAMIC"
    calls = []
    method.scheme = SimpleNamespace(apply_experts=lambda *a: calls.append(a) or "quantized")
    assert method.apply_experts(None, torch.zeros(1, 4), torch.tensor([1])) == "quantized"
    method.scheme = None  # the same wrapper now runs float experts
    layer = SimpleNamespace(w13_weight=torch.zeros(1, 4, 4), w2_weight=torch.zeros(1, 2, 4))
    assert method.apply_experts(layer, torch.ones(1, 4), torch.tensor([1])).shape == (1, 4)
    assert len(calls) == 1


def test_unregistered_expert_type_is_named(monkeypatch):
    from vllm_ascend.quantization.methods import registry

    monkeypatch.setitem(registry.SCHEMES._entries, ("LINEAR_ONLY", "linear"), object)
    with pytest.raises(UnsupportedSchemeError, match="no moe scheme .*'LINEAR_ONLY'"):
        moe_layer("LINEAR_ONLY")


# ------------------------------------------------------------------ auto-detection


def test_detect_description_only_checkpoint(tmp_path):
    build_checkpoint(tmp_path)
    cfg = SimpleNamespace(model=str(tmp_path), quantization=None, revision=None)
    assert maybe_detect_ascend_quantization(cfg) and cfg.quantization == ASCEND
    assert not maybe_detect_ascend_quantization(cfg)  # already set
    other = SimpleNamespace(model=str(tmp_path / "nope"), quantization=None, revision=None)
    assert not maybe_detect_ascend_quantization(other) and other.quantization is None


def test_enable_rebuilds_quant_config(tmp_path, vllm_dist):
    from vllm.config import LoadConfig, ModelConfig, VllmConfig

    build_checkpoint(tmp_path)  # description, but no quantization_config in config.json
    mc = ModelConfig(model=str(tmp_path), dtype="float32", skip_tokenizer_init=True,
                     max_model_len=64)
    vc = VllmConfig(model_config=mc, load_config=LoadConfig())
    # The state before the platform hook (which, once wired, has already run here).
    mc.quantization, vc.quant_config = None, None
    assert maybe_enable_ascend_quantization(vc)
    assert mc.quantization == ASCEND and isinstance(vc.quant_config, AscendQuantConfig)
    assert vc.quant_config.description.source == str(tmp_path / DESCRIPTION_FILE)
    assert not maybe_enable_ascend_quantization(vc)


def test_configs_pickle(tmp_path):
    """vLLM ships the quant config to its engine-core process by pickling."""
    import pickle

    build_checkpoint(tmp_path)
    cfg = AscendQuantConfig.from_config(json.loads((tmp_path / DESCRIPTION_FILE).read_text()))
    cfg.maybe_update_config(str(tmp_path))
    cfg.description.expert_quant_type  # noqa: B018 - populate the lazy cache
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy.description == cfg.description
    assert copy.files.file_of("model.norm.weight") == "model.safetensors"
