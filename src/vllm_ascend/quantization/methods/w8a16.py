"""W8A16 linear: int8 weights dequantised inside the matmul, activations stay in float.

Checkpoint tensors of one linear layer ``prefix`` (``N`` outputs, ``K`` inputs; a fused layer
carries one set per shard). ``G`` is the description's ``group_size``; 0 means per-channel:

=============  =================================  ===========================================
tensor         shape, dtype                       meaning
=============  =================================  ===========================================
weight         (N, K) int8                        ``w``
weight_scale   (N, 1) or (N,); (N, K/G) if G > 0  ``s[n]`` / ``s[n, g]``, any float dtype
weight_offset  same shape as weight_scale         ``o``, ModelSlim's zero point
=============  =================================  ===========================================

ModelSlim dequantises ``W[n, k] = (w[n, k] - o[n, g(k)]) * s[n, g(k)]`` with ``g(k) = k //
G``; the device computes ``(w + antiquant_offset) * antiquant_scale``, so the offset is
negated at load. Math::

    y[m, n] = sum_k x[m, k] * W[n, k] + bias[n]      # ops.npu_weight_quant_batchmatmul

After :meth:`process_weights_after_loading`: ``weight`` (K, N) int8 FRACTAL_NZ;
``weight_scale`` and ``weight_offset`` (= ``-o``) in the model dtype, shaped (N,) per-channel
or (K/G, N) per-group.
"""

from __future__ import annotations

import torch
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    ModelWeightParameter,
)

from vllm_ascend.device import ops
from vllm_ascend.quantization.errors import DescriptionError
from vllm_ascend.quantization.methods._linear_common import (
    FLOATS,
    QuantLinearBase,
    replace_param,
    to_device_layout,
)
from vllm_ascend.quantization.methods.registry import register_scheme


@register_scheme("W8A16", "linear")
class W8A16Linear(QuantLinearBase):
    """Weight-only int8: ``y = x @ ((w - o) * s)^T + b`` with per-channel or per-group s, o."""

    def group_size(self) -> int:
        """G from the description (0 = per-channel)."""
        group = self.quant_description.get("group_size", 0)
        if isinstance(group, bool) or not isinstance(group, int) or group < 0:
            raise DescriptionError(f"{self.prefix}: group_size {group!r} must be an integer "
                                   ">= 0 (0 = per-channel)")
        return group

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        self._begin(layer, input_size_per_partition, output_partition_sizes, params_dtype)
        n, k = self.n, self.k
        self.group = self.group_size()
        if self.group and k % self.group:
            raise DescriptionError(
                f"{self.prefix}: group_size {self.group} does not divide the layer's input "
                f"size {k} on this rank; accepted: a divisor of {k}, or 0 (per-channel)")
        self._register(layer, "weight", ModelWeightParameter,
                       torch.empty(n, k, dtype=torch.int8), weight_loader, (torch.int8,),
                       input_dim=1, output_dim=0)
        for name in ("weight_scale", "weight_offset"):
            if self.group:
                self._register(layer, name, GroupQuantScaleParameter,
                               torch.empty(n, k // self.group, dtype=torch.float32),
                               weight_loader, FLOATS, input_dim=1, output_dim=0)
            else:
                self._register(layer, name, ChannelQuantScaleParameter,
                               torch.empty(n, 1, dtype=torch.float32), weight_loader, FLOATS,
                               output_dim=0)

    def _device_weight(self, weight_nk: torch.Tensor) -> torch.Tensor:
        """Checkpoint weight (N, K) -> the operator's weight (K, N) int8 NZ."""
        return to_device_layout(weight_nk)

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        scale = self._check("weight_scale", layer.weight_scale.data)
        offset = self._check("weight_offset", layer.weight_offset.data, nonzero=False)
        dtype = self.params_dtype
        if self.group:
            scale, offset = scale.t().contiguous(), offset.t().contiguous()  # (K/G, N)
        else:
            scale, offset = scale.reshape(-1), offset.reshape(-1)            # (N,)
        replace_param(layer, "weight", self._device_weight(layer.weight.data))
        replace_param(layer, "weight_scale", scale.to(dtype))
        replace_param(layer, "weight_offset", (-offset).to(dtype))

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype."""
        y = ops.npu_weight_quant_batchmatmul(
            self._flat(x), layer.weight, layer.weight_scale, layer.weight_offset, bias=bias,
            antiquant_group_size=self.group)
        return self._unflat(y, x)
