"""quant_model_description.json parsing: fields, fused shards, experts, FLOAT, and a fuzz test
that only the package's own errors (DescriptionError / UnsupportedSchemeError) ever escape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.quantization.description import FLOAT, QuantDescription, parse_description
from vllm_ascend.quantization.errors import (
    AscendQuantizationError,
    DescriptionError,
    UnsupportedSchemeError,
)
from vllm_ascend.quantization.methods import registry

SRC = "/models/x/quant_model_description.json"
PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
L0 = "model.layers.0"


def desc(**entries) -> dict:
    base = {"model_quant_type": "W8A8_DYNAMIC", "version": "1.0.0", "group_size": 0}
    base.update(entries)
    return base


def test_fields_and_lookup():
    d = parse_description({
        **desc(kv_cache_type=None, metadata={"a": 1}, is_rot_used=False, future_field=[1]),
        f"{L0}.self_attn.q_proj.weight": "W8A8", f"{L0}.self_attn.k_proj.weight": "W8A8",
        f"{L0}.self_attn.v_proj.weight": "W8A8", f"{L0}.self_attn.o_proj.weight": "W8A16",
        f"{L0}.mlp.gate_up_proj.weight": "FLOAT", "hc_head_fn": "FLOAT",
    }, SRC)
    assert isinstance(d, QuantDescription)
    assert (d.model_quant_type, d.version, d.group_size) == ("W8A8_DYNAMIC", "1.0.0", 0)
    assert d.quant_type_for(f"{L0}.self_attn.qkv_proj", PACKED) == "W8A8"
    assert d.quant_type_for(f"{L0}.self_attn.o_proj", PACKED) == "W8A16"
    # A fused module stored fused on disk is looked up as itself.
    assert d.quant_type_for(f"{L0}.mlp.gate_up_proj", PACKED) == FLOAT
    assert d.shard_prefixes(f"{L0}.self_attn.qkv_proj", PACKED)[1] == f"{L0}.self_attn.k_proj"
    assert d.extras == {"future_field": [1]} and d.tensor_types["hc_head_fn"] == FLOAT
    assert d.attention_quant_type() is None
    assert d.raw["metadata"] == {"a": 1}


def test_fused_shards_must_agree():
    d = parse_description(desc(**{f"{L0}.mlp.gate_proj.weight": "W8A8_DYNAMIC",
                                  f"{L0}.mlp.up_proj.weight": "W8A16"}), SRC)
    with pytest.raises(DescriptionError) as info:
        d.quant_type_for(f"{L0}.mlp.gate_up_proj", PACKED)
    msg = str(info.value)
    assert SRC in msg and "gate_proj.weight' is 'W8A8_DYNAMIC'" in msg
    assert "up_proj.weight' is 'W8A16'" in msg


def test_missing_layer_entry_is_named():
    d = parse_description(desc(), SRC)
    with pytest.raises(DescriptionError, match=r"no entry for 'model\.layers\.0\.self_attn\.q"
                                               r"_proj\.weight'.*FLOAT"):
        d.quant_type_for(f"{L0}.self_attn.qkv_proj", PACKED)


def test_unknown_type_lists_registered_schemes():
    with pytest.raises(UnsupportedSchemeError) as info:
        parse_description(desc(**{"a.weight": "W3A3"}), SRC)
    msg = str(info.value)
    assert SRC in msg and "'W3A3'" in msg and "'a.weight'" in msg
    for quant_type, layer_type in registry.registered_schemes():
        assert f"{quant_type}/{layer_type}" in msg


def test_listing_is_dynamic(monkeypatch):
    """Schemes registered later (other modules) are accepted and listed."""
    class Late:
        pass

    monkeypatch.setitem(registry.SCHEMES._entries, ("W2A2_LATE", "linear"), Late)
    assert parse_description(desc(**{"a.weight": "W2A2_LATE"}), SRC).weight_type("a") == \
        "W2A2_LATE"
    with pytest.raises(UnsupportedSchemeError, match="W2A2_LATE/linear"):
        parse_description(desc(**{"a.weight": "W3A3"}), SRC)


@pytest.mark.parametrize("data,field", [
    ([], "JSON object"), ({"group_size": -1}, "'group_size'"),
    ({"group_size": True}, "'group_size'"), ({"group_size": "128"}, "'group_size'"),
    ({"version": [1]}, "'version'"), ({"model_quant_type": 3}, "'model_quant_type'"),
    ({"kv_cache_type": 8}, "'kv_cache_type'"), ({"metadata": "x"}, "'metadata'"),
    ({"is_rot_used": "no"}, "'is_rot_used'"), ({"a.weight": 3}, "'a.weight'"),
    ({"": "FLOAT"}, "keys"),
])
def test_malformed_inputs_name_file_and_field(data, field):
    with pytest.raises(DescriptionError) as info:
        parse_description(data, SRC)
    assert SRC in str(info.value) and field in str(info.value)


def test_rotation_unsupported():
    with pytest.raises(UnsupportedSchemeError, match="is_rot_used"):
        parse_description(desc(is_rot_used=True), SRC)


def test_experts():
    entries = {f"{L0}.mlp.experts.{e}.{p}.weight": "W8A8_DYNAMIC"
               for e in range(3) for p in ("gate_proj", "up_proj", "down_proj")}
    entries[f"{L0}.mlp.shared_experts.gate_proj.weight"] = "FLOAT"
    d = parse_description(desc(**entries), SRC)
    assert d.expert_quant_type(f"{L0}.mlp.experts") == "W8A8_DYNAMIC"
    floats = {k.replace("layers.0", "layers.1"): FLOAT for k in entries}
    d = parse_description(desc(**entries, **floats), SRC)
    assert d.expert_quant_type("model.layers.1.mlp.experts") == FLOAT
    mixed = dict(entries, **{f"{L0}.mlp.experts.2.down_proj.weight": "FLOAT"})
    with pytest.raises(DescriptionError, match="experts of .* disagree"):
        parse_description(desc(**mixed), SRC).expert_quant_type(f"{L0}.mlp.experts")
    with pytest.raises(DescriptionError, match="no expert weights"):
        d.expert_quant_type("model.layers.7.mlp.experts")
    fused = parse_description(desc(**{f"{L0}.mlp.experts.weight": "W8A8_DYNAMIC"}), SRC)
    assert fused.expert_quant_type(f"{L0}.mlp.experts") == "W8A8_DYNAMIC"


def test_attention_type_and_rename():
    d = parse_description(desc(fa_quant_type="FAKQuant", **{"x.q.weight": "FLOAT"}), SRC)
    assert d.attention_quant_type() == "FAKQuant"
    renamed = d.renamed(lambda k: None if k.startswith("x.") else k)
    assert "x.q.weight" not in renamed.tensor_types and renamed.source == SRC


# ------------------------------------------------------------------ fuzzing

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
type_strings = st.sampled_from(["FLOAT", "W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16", "", "w8a8",
                                "C8"])
keys = st.sampled_from([
    "model_quant_type", "version", "group_size", "kv_cache_type", "kv_quant_type",
    "fa_quant_type", "metadata", "optional", "is_rot_used", "a.weight", "a.q_proj.weight",
    "a.k_proj.weight", "a.v_proj.weight", "m.experts.0.up_proj.weight", "m.experts.weight",
    "m.experts.1.down_proj.weight", "plain"]) | st.text(max_size=16)
documents = st.dictionaries(keys, json_values | type_strings, max_size=10)


@given(data=documents | json_values)
def test_fuzz_only_package_errors_escape(data):
    try:
        d = parse_description(data, SRC)
    except (DescriptionError, UnsupportedSchemeError) as exc:
        assert SRC in str(exc)
        return
    for prefix in ("a", "a.qkv_proj", "m.experts", "nothing"):
        for lookup in (lambda p: d.quant_type_for(p, {"qkv_proj": ["q_proj", "k_proj",
                                                                   "v_proj"]}),
                       d.expert_quant_type, d.weight_type):
            try:
                result = lookup(prefix)
            except AscendQuantizationError as exc:
                assert isinstance(exc, DescriptionError) and SRC in str(exc)
            else:
                assert result is None or isinstance(result, str)
    d.attention_quant_type()
