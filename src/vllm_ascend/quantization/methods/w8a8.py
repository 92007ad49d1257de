"""W8A8 linear (static): int8 weights, int8 activations with a calibrated per-tensor scale.

Checkpoint tensors of one linear layer ``prefix`` as ModelSlim writes them (``N`` outputs,
``K`` inputs; a fused layer carries one set per shard):

=============  ==========================  ==================================================
tensor         shape, dtype                meaning
=============  ==========================  ==================================================
weight         (N, K) int8                 ``w``, symmetric
input_scale    (1,) float                  ``s_x``: activation scale
input_offset   (1,) float or int8          ``o_x``: activation zero point (integer-valued)
deq_scale      (N,) fp32, or int64         ``d[n] = s_x * s_w[n]``; int64 (fp16 models) holds
                                           the fp32 bit pattern in its low 32 bits
quant_bias     (N,) int32                  ``q[n]``, bias and zero-point correction (below)
weight_scale   (N, 1) or (N,) float        ``s_w[n]`` (validated; ``d`` already holds it)
weight_offset  (N, 1) or (N,) float        must be 0
=============  ==========================  ==================================================

Algebra, from first principles. The float layer is ``y[n] = sum_k x[k] W[n, k] + b[n]`` with
``W[n, k] = s_w[n] w[n, k]``. Static quantisation ``xq[k] = round(x[k] / s_x + o_x)`` gives
``x[k] ~= s_x (xq[k] - o_x)``, so::

    y[n] ~= s_x s_w[n] (sum_k xq[k] w[n, k] - o_x sum_k w[n, k]) + b[n]
          = d[n] (acc[n] + b[n] / d[n] - o_x sum_k w[n, k])        with acc = xq @ w^T
          = d[n] (acc[n] + q[n]),   q[n] = round(b[n] / d[n]) - o_x sum_k w[n, k]

which is exactly ``ops.npu_quant_matmul(xq, w^T, d, bias=q)`` (int32 bias added to the
int32 accumulator, then scaled). The float ``bias`` vLLM passes is therefore *not* added
again: ModelSlim folded it into ``q``. The only rounding beyond the activation's is
``round(b / d)``, at most ``d[n] / 2`` on the output.

Fused layers (qkv, gate_up) run one activation quantisation, so all shards must use one
``(s_x, o_x)``. ModelSlim calibrates q/k/v on the same input, so they normally agree; if
not, the shard with the largest ``s_x`` is kept (``s*, o*``; ``s*`` rounded to the model
dtype, in which the device quantiser holds it) and every shard whose ``(s_x, o_x)`` differs
from ``(s*, o*)`` gets its constants re-derived from the algebra above: with ``B[n] = q[n] + o_x sum_k w[n, k]`` (= ``b[n] /
d[n]``), ``d'[n] = d[n] s* / s_x`` and ``q'[n] = round(B[n] s_x / s*) - o* sum_k w[n, k]``.

Tensor parallelism: ``q`` holds the correction for the *whole* K, so on a row-parallel
layer (K split over ranks, outputs summed) only rank 0 adds it.

After loading: ``weight`` (K, N) int8 FRACTAL_NZ; ``act_scale`` / ``act_offset`` (K,) in the
model dtype (``s*``, ``o*`` repeated, as the device quantiser takes them); ``deq_scale`` (N,)
fp32, or int64 via ``ops.npu_trans_quant_param`` for fp16 models (the device's fp16 output
path needs it); ``quant_bias`` (N,) int32.
"""

from __future__ import annotations

import torch
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    ModelWeightParameter,
    PerTensorScaleParameter,
)

from vllm_ascend.device import ops
from vllm_ascend.quantization.methods._linear_common import (
    FLOATS,
    QuantLinearBase,
    replace_param,
    to_device_layout,
)
from vllm_ascend.quantization.methods._tensor_checks import drop_params
from vllm_ascend.quantization.methods.registry import register_scheme

_INT_OR_FLOAT = FLOATS + (torch.int8, torch.int32)


def rederive_for(target_scale: float, target_offset: float, weight: torch.Tensor,
                 widths: list[int], in_scale: torch.Tensor, in_offset: torch.Tensor,
                 deq_scale: torch.Tensor, quant_bias: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-shard ``deq_scale`` / ``quant_bias`` re-derived for activations quantised with
    ``(target_scale, target_offset)`` instead of each shard's own (module docstring).

    weight (N, K) int8; widths: rows per shard; in_scale / in_offset (S,) per shard;
    deq_scale (N,) fp32; quant_bias (N,) int32 -> (deq_scale (N,) fp32, quant_bias (N,) int32).
    A shard already on the target is returned unchanged (bit for bit).
    """
    deq, bias = deq_scale.double().clone(), quant_bias.to(torch.int64).clone()
    start = 0
    for shard, width in enumerate(widths):
        rows = slice(start, start + width)
        start += width
        s_x, o_x = float(in_scale[shard]), float(in_offset[shard])
        if (s_x, o_x) == (target_scale, target_offset):
            continue
        rowsum = weight[rows].to(torch.int64).sum(dim=1)
        exact = bias[rows].double() + o_x * rowsum.double()  # = b / d in accumulator units
        bias[rows] = torch.round(exact * (s_x / target_scale)).to(torch.int64) \
            - round(target_offset) * rowsum
        deq[rows] = deq[rows] * (target_scale / s_x)
    out = deq_scale.clone() if torch.equal(deq, deq_scale.double()) else deq.float()
    return out, bias.clamp(-2**31, 2**31 - 1).to(torch.int32)


@register_scheme("W8A8", "linear")
class W8A8StaticLinear(QuantLinearBase):
    """int8 weights x int8 activations quantised with a calibrated per-tensor scale/offset."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        self._begin(layer, input_size_per_partition, output_partition_sizes, params_dtype)
        n, k, shards = self.n, self.k, len(self.widths)
        self._register(layer, "weight", ModelWeightParameter,
                       torch.empty(n, k, dtype=torch.int8), weight_loader, (torch.int8,),
                       input_dim=1, output_dim=0)
        self._register(layer, "input_scale", PerTensorScaleParameter,
                       torch.empty(shards, dtype=torch.float32), weight_loader, FLOATS)
        self._register(layer, "input_offset", PerTensorScaleParameter,
                       torch.empty(shards, dtype=torch.float32), weight_loader, _INT_OR_FLOAT)
        self._register(layer, "deq_scale", ChannelQuantScaleParameter,
                       torch.empty(n, dtype=torch.float32), weight_loader,
                       FLOATS + (torch.int64,), output_dim=0)
        self._register(layer, "quant_bias", ChannelQuantScaleParameter,
                       torch.empty(n, dtype=torch.int32), weight_loader, (torch.int32,),
                       output_dim=0)
        for name in ("weight_scale", "weight_offset"):
            self._register(layer, name, ChannelQuantScaleParameter,
                           torch.empty(n, 1, dtype=torch.float32), weight_loader, FLOATS,
                           output_dim=0)

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        in_scale = self._check("input_scale", layer.input_scale.data, per_shard=True)
        in_offset = self._check("input_offset", layer.input_offset.data, nonzero=False,
                                per_shard=True)
        for shard, value in enumerate(in_offset.tolist()):
            if value != round(value) or not -128 <= value <= 127:
                raise self.tensor_error("input_offset", f"is {value}; an int8 zero point "
                                        "(an integer in [-128, 127]) is expected",
                                        shard if len(self.widths) > 1 else None)
        deq = self._check("deq_scale", layer.deq_scale.data)
        self._check("weight_scale", layer.weight_scale.data)
        self._check_zero("weight_offset", layer.weight_offset.data)
        weight = layer.weight.data
        # One (scale, offset) for the whole layer, as the device holds it (model dtype).
        keep = int(torch.argmax(in_scale))
        s_x = float(in_scale[keep].to(self.params_dtype))
        o_x = float(in_offset[keep])
        deq, quant_bias = rederive_for(s_x, o_x, weight, self.widths, in_scale, in_offset,
                                       deq, layer.quant_bias.data)
        if _adds_partial_sums(layer):
            quant_bias = torch.zeros_like(quant_bias)
        act_dtype = self.params_dtype
        replace_param(layer, "act_scale", torch.full((self.k,), s_x, dtype=act_dtype))
        replace_param(layer, "act_offset", torch.full((self.k,), o_x, dtype=act_dtype))
        if self.params_dtype == torch.float16:
            deq = ops.npu_trans_quant_param(deq)
        replace_param(layer, "deq_scale", deq)
        replace_param(layer, "quant_bias", quant_bias)
        replace_param(layer, "weight", to_device_layout(weight))
        drop_params(layer, "input_scale", "input_offset", "weight_offset")

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype; ``bias`` is already in ``quant_bias``."""
        xq = ops.npu_quantize(self._flat(x), layer.act_scale, layer.act_offset, torch.qint8,
                              -1, True)
        y = ops.npu_quant_matmul(xq, layer.weight, layer.deq_scale, bias=layer.quant_bias,
                                 output_dtype=x.dtype)
        return self._unflat(y, x)


def _adds_partial_sums(layer: torch.nn.Module) -> bool:
    """True on ranks > 0 of a row-parallel layer (their outputs are summed with rank 0's)."""
    from vllm.model_executor.layers.linear import RowParallelLinear

    return isinstance(layer, RowParallelLinear) and getattr(layer, "tp_rank", 0) > 0
