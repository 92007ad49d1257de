"""The two registered ops a sharded layer's forward is made of, so a compiled graph keeps them.

- ``vllm_ascend::shared_weight_prefetch(x, series, layer) -> token``: start the broadcast of
  layer ``(layer + prefetch_step) % L`` of the series (async); ``token`` is an empty tensor.
- ``vllm_ascend::shared_weight_linear(x, token, bias, series, layer, out_features) -> y``:
  wait for layer ``layer``'s weights, then ``y (..., out_features)`` = the layer's quant
  method on them.

Each takes the layer's input ``x`` (so it runs after the previous layers, whose output it
is) and the wait takes the prefetch's token (so it runs after the start); the next layer's
prefetch takes this layer's output downstream, so it runs after this compute. Tracing
sees opaque ops with fake implementations (no broadcast at trace time); the weights are
read inside the op, never as graph inputs a compiler could constant-fold. ``series`` is a
handle from :func:`register_runtime`.
"""

from __future__ import annotations

import itertools
import weakref

import torch

_RUNTIMES: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_IDS = itertools.count(1)


def register_runtime(runtime) -> int:
    """A handle for ``runtime`` (an object with ``prefetch(layer)`` and
    ``compute(layer, x, bias)``); held weakly: a dropped runtime's handle goes stale."""
    handle = next(_IDS)
    _RUNTIMES[handle] = runtime
    return handle


def runtime(handle: int):
    try:
        return _RUNTIMES[handle]
    except KeyError:
        raise RuntimeError(f"layer_sharding: series handle {handle} is not live (its model "
                           "was released, or the ring was never built)") from None


@torch.library.custom_op("vllm_ascend::shared_weight_prefetch", mutates_args=())
def shared_weight_prefetch(x: torch.Tensor, series: int, layer: int) -> torch.Tensor:
    runtime(series).prefetch(layer)
    return x.new_empty(0)


@shared_weight_prefetch.register_fake
def _(x: torch.Tensor, series: int, layer: int) -> torch.Tensor:
    return x.new_empty(0)


@torch.library.custom_op("vllm_ascend::shared_weight_linear", mutates_args=())
def shared_weight_linear(x: torch.Tensor, token: torch.Tensor, bias: torch.Tensor | None,
                         series: int, layer: int, out_features: int) -> torch.Tensor:
    return runtime(series).compute(layer, x, bias)


@shared_weight_linear.register_fake
def _(x: torch.Tensor, token: torch.Tensor, bias: torch.Tensor | None, series: int,
      layer: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))
