"""The quant method a sharded layer gets: its own method for loading, the ring for compute.

:class:`ShardedLinearMethod` replaces ``layer.quant_method`` of every layer of a series
(after the model is built, before weights load), keeping the layer's class and forward:
vLLM's ``RowParallelLinear`` still all-reduces, ``ColumnParallelLinear`` still gathers,
only ``quant_method.apply`` changes. On the owner, ``process_weights_after_loading`` runs
the layer's own method; on the other ranks it does nothing (they hold no weights of the
layer). ``apply`` is the two custom ops of ``shared_weight.custom_ops``.

An unquantized layer's processed form is its weight and its compute ``F.linear``:
vLLM's CPU ``UnquantizedLinearMethod`` would repack the weight into a oneDNN handle,
which is not a tensor that can be broadcast.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.linear import LinearMethodBase, UnquantizedLinearMethod

import vllm_ascend.shared_weight.custom_ops  # noqa: F401 - registers the ops


def apply_inner(method, layer: torch.nn.Module, x: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """``x (..., K) -> (..., N)`` through ``method`` on ``layer``'s (processed) tensors."""
    if isinstance(method, UnquantizedLinearMethod):
        return torch.nn.functional.linear(x, layer.weight, bias)
    return method.apply(layer, x, bias)


class ShardedLinearMethod(LinearMethodBase):
    """Layer ``index`` of series ``suffix``; ``owned``: this rank stores its weights."""

    def __init__(self, inner, suffix: str, index: int, owned: bool, out_features: int) -> None:
        self.inner, self.suffix, self.index, self.owned = inner, suffix, index, owned
        self.out_features = out_features
        #: the series runtime's handle, set once the ring is built
        self.handle: int | None = None
        #: the runtime itself: the model's layers keep it alive (the op registry holds it
        #: weakly, so a released model's handle goes stale)
        self.runtime = None

    def __getattr__(self, name: str):
        # Attributes vLLM reads off a quant method (e.g. ``quant_config``) are the layer's own.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def create_weights(self, *args, **kwargs) -> None:
        raise RuntimeError("ShardedLinearMethod wraps a layer whose weights already exist")

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if self.owned and not isinstance(self.inner, UnquantizedLinearMethod):
            self.inner.process_weights_after_loading(layer)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., out_features)``: start layer ``index + P``'s broadcast,
        wait for this layer's, compute."""
        if self.handle is None:
            raise RuntimeError(
                f"layer_sharding: layer {self.index} of series {self.suffix!r} ran before its "
                "prefetch ring was built (a module calling it while weights load?)")
        token = torch.ops.vllm_ascend.shared_weight_prefetch(x, self.handle, self.index)
        return torch.ops.vllm_ascend.shared_weight_linear(x, token, bias, self.handle,
                                                          self.index, self.out_features)
