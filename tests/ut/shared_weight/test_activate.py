"""The platform hook: which configs select the sharding loader."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from vllm_ascend.shared_weight.activate import configure_layer_sharding
from vllm_ascend.shared_weight.config import LayerShardingConfigError
from vllm_ascend.shared_weight.loader import LOAD_FORMAT


def config(dp=2, pp=1, fmt="auto", layers=("o_proj",)):
    extra = {"ascend": {"layer_sharding": {"layers": list(layers)}}} if layers else {}
    return SimpleNamespace(additional_config=extra, load_config=SimpleNamespace(load_format=fmt),
                           parallel_config=SimpleNamespace(data_parallel_size=dp,
                                                           pipeline_parallel_size=pp))


def test_dp2_selects_the_loader():
    c = config()
    assert configure_layer_sharding(c) and c.load_config.load_format == LOAD_FORMAT


def test_off_and_single_rank_leave_the_config(caplog):
    c = config(layers=())
    assert not configure_layer_sharding(c) and c.load_config.load_format == "auto"
    c = config(dp=1)
    with caplog.at_level(logging.WARNING, logger="vllm.ascend"):
        assert not configure_layer_sharding(c)
    assert c.load_config.load_format == "auto"
    assert "data_parallel_size=1): layer sharding is off" in caplog.text


def test_refusals_name_the_setting():
    with pytest.raises(LayerShardingConfigError, match="pipeline_parallel_size=2"):
        configure_layer_sharding(config(pp=2))
    with pytest.raises(LayerShardingConfigError, match="load_format='dummy' is not supported "
                       "with layer sharding; accepted: auto, safetensors"):
        configure_layer_sharding(config(fmt="dummy"))


def test_loader_is_registered_with_vllm():
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    from vllm_ascend.shared_weight.loader import LayerShardingLoader, register_loader

    register_loader()
    register_loader()  # once per process
    assert type(get_model_loader(LoadConfig(load_format=LOAD_FORMAT))) is LayerShardingLoader
