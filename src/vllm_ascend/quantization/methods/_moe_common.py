"""Pieces shared by the quantised MoE schemes: parameter registration compatible with vLLM's
expert weight loader, activation quantisation, and the rows-past-the-total rule.

vLLM's ``RoutedExperts.weight_loader`` dispatches on the *parameter name* and on a
``quant_method`` attribute of the parameter:

- names containing ``bias`` (``w13_scale_bias``) load like biases: w1/w3 into halves of the
  output dim (TP-sharded), w2 copied whole;
- names containing ``scale``/``offset`` need ``quant_method``: ``"channel"`` for
  ``(E, out, 1)`` tensors (w2 copied whole), ``"group"`` for ``(E, out, in/G)`` tensors
  (w2 sharded on the input dim like the weight);
- other names containing ``weight`` load like the weight itself.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.fused_moe import FusedMoeWeightScaleSupported
from vllm.model_executor.utils import set_weight_attrs

from vllm_ascend.device import ops
from vllm_ascend.quantization.errors import QuantTensorError

CHANNEL = FusedMoeWeightScaleSupported.CHANNEL.value
GROUP = FusedMoeWeightScaleSupported.GROUP.value


def register(layer: torch.nn.Module, name: str, data: torch.Tensor, attrs: dict[str, Any],
             quant_method: str | None = None) -> None:
    """A frozen Parameter carrying vLLM's loader attributes (+ ``quant_method``)."""
    param = torch.nn.Parameter(data, requires_grad=False)
    layer.register_parameter(name, param)
    extra = dict(attrs)
    if quant_method is not None:
        extra["quant_method"] = quant_method
    else:
        extra.pop("quant_method", None)
    set_weight_attrs(param, extra)


def moe_tp(layer: torch.nn.Module) -> tuple[int, int]:
    """(tp_rank, tp_size) of the expert weights: vLLM's ``layer.moe_config``; (0, 1) on a
    bare test module."""
    cfg = getattr(layer, "moe_config", None)
    return int(getattr(cfg, "tp_rank", 0)), int(getattr(cfg, "tp_size", 1))


def check_group_list(group_list: torch.Tensor, experts: int, prefix: str) -> None:
    if group_list.dim() != 1 or group_list.numel() != experts:
        raise QuantTensorError(f"{prefix}: group_list must be ({experts},) per-expert row "
                               f"counts, got shape {tuple(group_list.shape)}")


def quantize_rows(x: torch.Tensor, dynamic_scale: torch.Tensor | None, prefix: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows -> (int8 rows, fp32 per-row scale). Float x is quantised with
    ``ops.npu_dynamic_quant``; with ``dynamic_scale`` x must already be int8 (MC2 dispatch)."""
    if dynamic_scale is None:
        if not x.is_floating_point():
            raise QuantTensorError(f"{prefix}: x is {x.dtype} without dynamic_scale; pass float "
                                   "rows, or int8 rows with their (M,) scale")
        return ops.npu_dynamic_quant(x)
    if x.dtype != torch.int8 or dynamic_scale.reshape(-1).numel() != x.shape[0]:
        raise QuantTensorError(f"{prefix}: with dynamic_scale, x must be int8 (M, H) and the "
                               f"scale (M,); got {x.dtype} {tuple(x.shape)} and "
                               f"{tuple(dynamic_scale.shape)}")
    return x, dynamic_scale.reshape(-1).float()


def zero_rows_past_total(y: torch.Tensor, group_list: torch.Tensor) -> torch.Tensor:
    """Rows at or beyond ``sum(group_list)`` belong to no expert: return them as 0 on every
    backend (the device leaves them unwritten). No host sync."""
    valid = torch.arange(y.shape[0], device=y.device) < group_list.sum()
    return torch.where(valid[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))


def out_dtype(x: torch.Tensor, params_dtype: torch.dtype) -> torch.dtype:
    """Float input keeps its dtype; pre-quantised int8 input returns the model dtype."""
    return x.dtype if x.is_floating_point() else params_dtype
