"""W4A4_FLATQUANT_DYNAMIC linear: Kronecker-factored input transform, per-token int4
activations with a clip ratio, per-channel int4 weights (ModelSlim FlatQuant).

Checkpoint tensors (``N`` outputs, ``K = K1 * K2`` inputs):

=============  ==============  =================================================
tensor         shape           meaning
=============  ==============  =================================================
weight         (N, K) int8     int4 values in [-8, 7], one per byte
weight_scale   (N, 1) fp32     per-channel scale ``s_w``
weight_offset  (N, 1) fp32     must be 0 (symmetric)
left_trans     (K1, K1)        left factor ``P1`` of the transform
right_trans    (K2, K2)        right factor ``P2``
clip_ratio     (1,) fp32       activation clip ``c`` in (0, 1]
=============  ==============  =================================================

``K1 <= K2`` are the factors ``a - b, a + b`` of ``K = a^2 - b^2`` with the smallest
``a >= sqrt(K)`` (:func:`kronecker_dims`), the rule vllm-ascend uses to size the two
tensors; K must be a multiple of 8 (int4 packing).

Math, per token ``x (K,)`` viewed as ``X (K1, K2)`` (row-major)::

    T = P1^T @ X @ P2                        # flattened back to t (K,)
    s_x = c * max|t| / 7                     # 1 for an all-zero row
    q = clamp(round_half_even(t / s_x), -8, 7)
    y[n] = s_x * s_w[n] * sum_k q[k] * w[n, k]   (+ bias[n])

The transform runs in fp32 with torch matmuls; the quantisation and the int4 x int4 matmul
go through ``ops.npu_quantize(t, s_x, None, torch.quint4x2, axis=0)`` and
``ops.npu_quant_matmul(q, weight.t(), s_w, pertoken_scale=s_x)``. (On the device vllm-ascend
fuses the transform and quantisation into ``npu_kronecker_quant``, which is outside the
reference operator set; CANN documents its scale as ``max|t| / (7 / clipRatio)`` — older
docs wrote ``7 * clipRatio`` — and this scheme follows the clipping form above.)

Processed: ``weight`` int32 (N, K/8) kernel int4 pack, ``weight_scale`` fp32 (N,),
``left_trans`` / ``right_trans`` fp32, ``clip_ratio`` fp32 (1,). Only layers whose whole
input is on this rank are supported (a TP-sharded K cannot apply the K1 x K2 transform).
"""

from __future__ import annotations

import itertools
import math

import torch
from vllm.model_executor.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    ModelWeightParameter,
)

from vllm_ascend.device import ops
from vllm_ascend.quantization.errors import AscendQuantizationError
from vllm_ascend.quantization.methods import _tensor_checks as chk
from vllm_ascend.quantization.methods._int4 import kernel_int4
from vllm_ascend.quantization.methods.base import AscendLinearScheme
from vllm_ascend.quantization.methods.registry import register_scheme

INT4_MAX = 7.0


def kronecker_dims(k: int) -> tuple[int, int]:
    """``(K1, K2)`` with ``K1 * K2 = k``: ``a -/+ b`` for the smallest ``a >= sqrt(k)`` such
    that ``a^2 - k`` is a perfect square ``b^2``. k must be odd or a multiple of 4."""
    if k <= 0 or k % 4 == 2:
        raise ValueError(f"{k} is not a difference of two squares (needs odd or k % 4 == 0)")
    a = math.isqrt(k)
    if a * a < k:
        a += 1
    while True:
        b = math.isqrt(a * a - k)
        if b * b == a * a - k:
            return a - b, a + b
        a += 1


def quantize_tokens(t: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int4 with clipping: ``t (M, K)`` fp32 -> (packed int32 (M, K/8),
    scale fp32 (M,)), ``scale = clip * max|t| / 7`` (1 for an all-zero row)."""
    scale = t.abs().amax(dim=-1) * (clip / INT4_MAX)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ops.npu_quantize(t, scale, None, torch.quint4x2, axis=0, div_mode=True), scale


@register_scheme("W4A4_FLATQUANT_DYNAMIC", "linear")
class W4A4FlatQuantLinear(AscendLinearScheme):
    """FlatQuant: ``x -> P1^T X P2`` -> per-token int4 (clipped) -> int4 x int4 matmul."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        if k != input_size:
            raise AscendQuantizationError(
                f"layer '{self.prefix}' (W4A4_FLATQUANT_DYNAMIC): needs the whole input "
                f"({input_size}) on each rank, got a shard of {k}; tensor-parallel row "
                "sharding is not supported")
        if k % 8:
            raise self.tensor_error("weight", f"has input size {k}; int4 packing needs a "
                                    "multiple of 8")
        self.k, self.n, self.widths = k, n, list(output_partition_sizes)
        self.k1, self.k2 = kronecker_dims(k)
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(n, k, dtype=torch.int8), input_dim=1, output_dim=0,
            weight_loader=weight_loader))
        # float tensors start as NaN (never loaded -> load-time error), offsets as 0
        for name, data in (("weight_scale", chk.unloaded(n, 1)),
                           ("weight_offset", torch.zeros(n, 1))):
            layer.register_parameter(name, ChannelQuantScaleParameter(
                data=data, output_dim=0, weight_loader=weight_loader))
        for name, d in (("left_trans", self.k1), ("right_trans", self.k2)):
            layer.register_parameter(name, BasevLLMParameter(
                data=chk.unloaded(d, d, dtype=params_dtype), weight_loader=weight_loader))
        layer.register_parameter("clip_ratio", BasevLLMParameter(
            data=chk.unloaded(1), weight_loader=weight_loader))

    def shard_of_index(self, name: str, index: tuple[int, ...]) -> int | None:
        """The fused shard owning output channel ``index[0]`` (weight, scale, offset)."""
        if len(self.widths) < 2 or not index or not name.startswith("weight"):
            return None
        for shard, bound in enumerate(itertools.accumulate(self.widths)):
            if index[0] < bound:
                return shard
        return None

    def process_weights_after_loading(self, layer) -> None:
        n, k = self.n, self.k

        def tensor(name, shape, dtype=None):
            return chk.loaded(layer, name, shape, self, dtype)

        weight = chk.int_range(tensor("weight", (n, k), torch.int8), -8, 7, "weight", self)
        scale = chk.finite_nonzero(tensor("weight_scale", (n, 1)), "weight_scale", self)
        chk.all_zero(tensor("weight_offset", (n, 1)), "weight_offset", self)
        trans = {name: chk.finite(tensor(name, (d, d)), name, self).float()
                 for name, d in (("left_trans", self.k1), ("right_trans", self.k2))}
        clip = chk.finite(tensor("clip_ratio", (1,)), "clip_ratio", self).float()
        if not 0 < float(clip) <= 1:
            raise self.tensor_error("clip_ratio", f"is {float(clip)}, outside (0, 1]")
        self.clip = float(clip)
        chk.replace_param(layer, "weight", kernel_int4(weight))
        chk.replace_param(layer, "weight_scale", scale.reshape(n).float())
        for name, t in trans.items():
            chk.replace_param(layer, name, t.contiguous())
        chk.replace_param(layer, "clip_ratio", clip.reshape(1))
        chk.drop_params(layer, "weight_offset")

    def transform(self, layer, x: torch.Tensor) -> torch.Tensor:
        """``x (..., K)`` -> fp32 ``t (M, K)``, ``T = P1^T @ X @ P2`` per token."""
        xs = x.reshape(-1, self.k1, self.k2).float()
        t = layer.left_trans.transpose(0, 1) @ xs @ layer.right_trans
        return t.reshape(-1, self.k)

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype."""
        q, x_scale = quantize_tokens(self.transform(layer, x), self.clip)
        y = ops.npu_quant_matmul(q, layer.weight.t(), layer.weight_scale,
                                 pertoken_scale=x_scale, output_dtype=x.dtype)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.n)
