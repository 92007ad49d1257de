"""W8A8_DYNAMIC linear: int8 per-channel weights, int8 per-token dynamic activations.

Checkpoint tensors of one linear layer ``prefix`` (``N`` outputs, ``K`` inputs; fused layers
carry one set per shard, e.g. ``q_proj`` / ``k_proj`` / ``v_proj``):

=============  ===============================  =============================================
tensor         shape, dtype                     meaning
=============  ===============================  =============================================
weight         (N, K) int8                      ``w``, symmetric, values in [-128, 127]
weight_scale   (N, 1) or (N,), any float        ``s_w[n]``: ``W[n, k] = w[n, k] * s_w[n]``
weight_offset  (N, 1) or (N,), any float        must be 0 (symmetric weights)
=============  ===============================  =============================================

Math, per row ``m`` of ``x (M, K)``::

    s_x[m] = max_k |x[m, k]| / 127;  xq[m, k] = round(x[m, k] / s_x[m])  # ops.npu_dynamic_quant
    y[m, n] = (sum_k xq[m, k] * w[n, k]) * s_w[n] * s_x[m] + bias[n]     # ops.npu_quant_matmul

After :meth:`process_weights_after_loading`: ``weight`` (K, N) int8 in FRACTAL_NZ,
``weight_scale`` (N,) fp32; ``weight_offset`` is dropped.
"""

from __future__ import annotations

import torch
from vllm.model_executor.parameter import ChannelQuantScaleParameter, ModelWeightParameter

from vllm_ascend.device import ops
from vllm_ascend.quantization import norm_quant
from vllm_ascend.quantization.methods._linear_common import (
    FLOATS,
    QuantLinearBase,
    replace_param,
    to_device_layout,
)
from vllm_ascend.quantization.methods._tensor_checks import drop_params
from vllm_ascend.quantization.methods._tp_quant import dynamic_quant_tp
from vllm_ascend.quantization.methods.registry import register_scheme


@register_scheme("W8A8_DYNAMIC", "linear")
class W8A8DynamicLinear(QuantLinearBase):
    """int8 weights (per-channel scale) x int8 activations (per-token scale, at run time)."""

    #: TP size when the layer is row-parallel (its input sharded), else 1; set at load.
    row_tp = 1

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        self._begin(layer, input_size_per_partition, output_partition_sizes, params_dtype)
        n, k = self.n, self.k
        self._register(layer, "weight", ModelWeightParameter,
                       torch.empty(n, k, dtype=torch.int8), weight_loader, (torch.int8,),
                       input_dim=1, output_dim=0)
        for name in ("weight_scale", "weight_offset"):
            self._register(layer, name, ChannelQuantScaleParameter,
                           torch.empty(n, 1, dtype=torch.float32), weight_loader, FLOATS,
                           output_dim=0)

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        scale = self._check("weight_scale", layer.weight_scale.data)
        self._check_zero("weight_offset", layer.weight_offset.data)
        replace_param(layer, "weight", to_device_layout(layer.weight.data))
        replace_param(layer, "weight_scale", scale.reshape(-1).float().contiguous())
        drop_params(layer, "weight_offset")
        self.row_tp = row_parallel_tp_size(layer)

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype (float x), or int8 x from a fused norm
        (``norm_quant``) -> the model dtype."""
        # A row-parallel layer holds one TP slice of each row: quantise with the whole row's
        # scale, as one process would (_tp_quant).
        # Rows already quantised by a fused norm (quantization/norm_quant.py) pass through.
        x_scale = norm_quant.token_scale(x)
        if x_scale is None:
            xq, x_scale = dynamic_quant_tp(self._flat(x), self.row_tp)
        else:
            xq = self._flat(x)
        dtype = x.dtype if x.is_floating_point() else self.params_dtype
        y = ops.npu_quant_matmul(xq, layer.weight, layer.weight_scale, pertoken_scale=x_scale,
                                 bias=bias, output_dtype=dtype)
        return self._unflat(y, x)


def row_parallel_tp_size(layer: torch.nn.Module) -> int:
    """TP size of a vLLM ``RowParallelLinear`` (its input is sharded), else 1."""
    from vllm.model_executor.layers.linear import RowParallelLinear

    return int(getattr(layer, "tp_size", 1)) if isinstance(layer, RowParallelLinear) else 1
