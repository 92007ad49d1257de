"""Synthetic checkpoints and loaders shared by the W4A8 / FlatQuant / MoE scheme tests."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from vllm.model_executor import parameter as vllm_parameter

from vllm_ascend.quantization.methods import get_scheme_class


@pytest.fixture(scope="module", autouse=True)
def single_rank():
    """vLLM's linear parameter classes read the TP rank at construction: pretend rank 0 of 1
    (module-scoped so hypothesis tests can use it)."""
    with mock.patch.object(vllm_parameter, "get_tensor_model_parallel_rank", return_value=0), \
            mock.patch.object(vllm_parameter, "get_tensor_model_parallel_world_size",
                              return_value=1):
        yield


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def int4_values(seed: int, shape, lo: int = -8, hi: int = 7) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=gen(seed), dtype=torch.int8)


def uniform(seed: int, shape, lo: float, hi: float) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(shape, generator=gen(seed), dtype=torch.float64)).float()


def scheme(quant_type: str, layer_type: str, description: dict, prefix: str = "model.layers.0.x"):
    return get_scheme_class(quant_type, layer_type)(description, prefix)


def copy_into(layer: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Simulated weight loading: copy each checkpoint tensor into the declared parameter."""
    for name, t in tensors.items():
        param = getattr(layer, name)
        assert tuple(param.shape) == tuple(t.shape), (name, param.shape, t.shape)
        param.data.copy_(t)


def column_loader(param, loaded_weight, *args, **kwargs):
    """What vLLM's ``weight_loader_v2`` does for an unsharded column-parallel layer."""
    param.load_column_parallel_weight(loaded_weight)


def check_close(actual, expected, magnitude, rtol=1e-5):
    """|actual - expected| <= rtol * (sum of |terms|): robust to cancellation."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.double() - expected.double()).abs()
    bound = rtol * magnitude.double() + 1e-12
    assert bool((err <= bound).all()), float((err - bound).max())
