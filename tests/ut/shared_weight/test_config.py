"""The ``layer_sharding`` section, the series checks and the ring's slot count."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.shared_weight.config import (
    MAX_PREFETCH_STEP,
    LayerShardingConfig,
    LayerShardingConfigError,
    check_parallel,
    check_series_length,
    layer_sharding_from,
    parse_layer_sharding,
)
from vllm_ascend.shared_weight.ring import slots_needed


def test_defaults_and_absent_section():
    assert not parse_layer_sharding(None).enabled
    assert not layer_sharding_from({"ascend": {}}).enabled
    cfg = layer_sharding_from({"ascend": {"layer_sharding": {"layers": ["o_proj"],
                                                             "prefetch_step": 2}}})
    assert cfg == LayerShardingConfig(("o_proj",), 2) and cfg.ring_size == 3


@pytest.mark.parametrize("section, message", [
    ({"layer": ["o_proj"]}, "unknown key(s) ['layer']; accepted keys: layers, prefetch_step"),
    ({"layers": "o_proj"}, "['layers'] = 'o_proj': must be a list of module suffixes"),
    ({"layers": ["o_proj", "o_proj"]}, "['o_proj'] listed twice"),
    ({"layers": [".o_proj"]}, "'.o_proj' is not a module suffix"),
    ({"layers": ["kv_b_proj"]}, "'kv_b_proj' cannot be sharded: MLA attention"),
    ({"prefetch_step": -1}, f"['prefetch_step'] = -1: must be an integer in [0, "
                            f"{MAX_PREFETCH_STEP}]"),
    ({"prefetch_step": True}, "['prefetch_step'] = True"),
    ([], "must be a JSON object, got list"),
])
def test_bad_sections_name_field_value_and_accepted(section, message):
    with pytest.raises(LayerShardingConfigError) as e:
        parse_layer_sharding(section)
    assert message in str(e.value)
    assert "additional_config['ascend']['layer_sharding']" in str(e.value)


def test_parallel_checks():
    cfg = LayerShardingConfig(("o_proj",), 1)
    assert check_parallel(cfg, pipeline_parallel_size=1, data_parallel_size=2)
    assert not check_parallel(cfg, pipeline_parallel_size=1, data_parallel_size=1)
    assert not check_parallel(LayerShardingConfig(), pipeline_parallel_size=2,
                              data_parallel_size=2)
    with pytest.raises(LayerShardingConfigError, match="pipeline_parallel_size=2"):
        check_parallel(cfg, pipeline_parallel_size=2, data_parallel_size=2)
    with pytest.raises(LayerShardingConfigError, match="fewer than the 4 ranks"):
        check_series_length(cfg, "o_proj", 3, 4)
    with pytest.raises(LayerShardingConfigError, match=r"accepted: 0..1\)"):
        check_series_length(LayerShardingConfig(("o_proj",), 2), "o_proj", 2, 2)


@given(layers=st.integers(1, 40), world=st.integers(1, 8), p=st.integers(0, 8),
       rank=st.integers(0, 7))
def test_slots_needed_is_the_worst_window(layers, world, p, rank):
    rank %= world
    owned = [i % world == rank for i in range(layers)]
    got = slots_needed(layers, p, owned)
    # brute force: simulate the ring's in-flight set at each layer over two wraps
    worst = 0
    for step in range(2 * layers):
        inflight = [(step + k) % layers for k in range(p + 1)]
        worst = max(worst, sum(not owned[j] for j in inflight))
    assert got == worst <= p + 1


def test_series_errors(vllm_ctx):
    from vllm.model_executor.layers.linear import RowParallelLinear

    from vllm_ascend.shared_weight.series import find_series

    class M(torch.nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for i, k in enumerate(sizes):
                blk = torch.nn.Module()
                blk.o_proj = RowParallelLinear(k, 8, bias=False, prefix=f"layers.{i}.o_proj")
                blk.down_proj = RowParallelLinear(8, 8, bias=False)
                self.layers.append(blk)

    with pytest.raises(LayerShardingConfigError) as e:
        find_series(M([8, 8]), ("q_proj",))
    assert "'q_proj' names no linear layer of this model; its linear layer suffixes: " \
           "down_proj, o_proj" in str(e.value)
    with pytest.raises(LayerShardingConfigError) as e:
        find_series(M([8, 16]), ("o_proj",))
    assert "layers.1.o_proj differs from layers.0.o_proj in its parameters (shape / dtype): " \
           "weight [8, 16] float32 vs weight [8, 8] float32" in str(e.value)
    (s,) = find_series(M([8, 8, 8]), ("o_proj",))
    assert s.names == ["layers.0.o_proj", "layers.1.o_proj", "layers.2.o_proj"]


def test_series_with_two_quant_schemes_is_refused(vllm_ctx):
    from vllm.model_executor.layers.linear import RowParallelLinear

    from tests.ut.quantization.layers import config_for
    from vllm_ascend.shared_weight.series import find_series

    config = config_for({"layers.0.o_proj": "W8A8_DYNAMIC", "layers.1.o_proj": "FLOAT"})
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for i in range(2):
        blk = torch.nn.Module()
        blk.o_proj = RowParallelLinear(8, 8, bias=False, quant_config=config,
                                       prefix=f"layers.{i}.o_proj")
        model.layers.append(blk)
    with pytest.raises(LayerShardingConfigError) as e:
        find_series(model, ("o_proj",))
    assert "layers.1.o_proj differs from layers.0.o_proj in its quant scheme: " in str(e.value)
    assert "W8A8DynamicLinear" in str(e.value)
