"""W4A8_DYNAMIC linear: per-group int4 weights, two-level scales (ModelSlim).

Checkpoint tensors of one linear layer ``prefix`` (``N`` outputs, ``K`` inputs on this rank,
``G`` = the description's ``group_size``, 256 when absent, 0 = one group of all K):

========================  ================  ============================================
tensor                    shape             meaning
========================  ================  ============================================
weight (legacy)           (N, K) int8       one int4 value per byte
weight (version 1.0.0)    (N/2, K) int8     two int4 per byte along N (``_int4`` module)
weight_scale              (N, 1)            per-channel scale ``s_c``
weight_offset             (N, 1)            must be 0 (symmetric)
weight_scale_second       (N, K/G)          per-group scale ``s_g`` (only when G > 0)
weight_offset_second      (N, K/G)          must be 0 (symmetric)
scale_bias (1.0.0 only)   (N, 1) / (N, 16)  quantizer's A8W4 bias; 16 columns on row-parallel
                                            layers. Checked finite, otherwise unused here.
========================  ================  ============================================

The description's ``version`` picks the weight layout: ``"1.0.0"`` packed pairs, absent or
``"0"`` legacy; anything else is a :class:`DescriptionError`.

After :meth:`process_weights_after_loading` both layouts are the same tensors:
``weight`` int32 ``(K, N/8)`` (kernel int4 pack) and ``weight_scale`` ``(K/G, N)`` (or
``(1, N)`` for G = 0) in the model dtype, ``weight_scale[g, n] = s_c[n] * s_g[n, g]``.

Math. vllm-ascend's W4A8_DYNAMIC linear runs the int4 weight through the weight-only
quantised matmul (activations stay in the model dtype; only the MoE experts quantise them
to int8), so this scheme does too::

    y[m, n] = sum_g weight_scale[g, n] * sum_{k in group g} x[m, k] * w[k, n]  (+ bias[n])

through ``ops.npu_weight_quant_batchmatmul(x, weight, weight_scale,
antiquant_group_size=G)``.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    ModelWeightParameter,
    PackedvLLMParameter,
)

from vllm_ascend.device import ops
from vllm_ascend.quantization.errors import DescriptionError
from vllm_ascend.quantization.methods import _tensor_checks as chk
from vllm_ascend.quantization.methods._int4 import kernel_int4, unpack_int4_pairs
from vllm_ascend.quantization.methods.base import AscendLinearScheme
from vllm_ascend.quantization.methods.registry import register_scheme

#: ``version`` values of quant_model_description.json -> True for the packed-pairs layout.
W4A8_VERSIONS = {"0": False, "1.0.0": True}
DEFAULT_GROUP_SIZE = 256
#: scale_bias columns of row-parallel layers in the 1.0.0 format (partial sums over 16
#: chunks of K; column-parallel layers have one).
SCALE_BIAS_CHUNKS = 16


def w4a8_format(description: dict[str, Any], prefix: str) -> tuple[int, bool]:
    """(group size G >= 0, packed pairs?) from the description, validated."""
    raw_version = description.get("version", "0")
    version = str(raw_version)
    if version not in W4A8_VERSIONS:
        raise DescriptionError(
            f"{prefix}: W4A8_DYNAMIC checkpoint version {raw_version!r} is not supported; "
            f"accepted 'version' values: {', '.join(map(repr, W4A8_VERSIONS))} (absent = '0')")
    raw_group = description.get("group_size", DEFAULT_GROUP_SIZE)
    try:
        group = int(raw_group)
    except (TypeError, ValueError):
        group = -1
    if group < 0 or isinstance(raw_group, bool):
        raise DescriptionError(f"{prefix}: group_size {raw_group!r} must be an integer >= 0 "
                               "(0 = per-channel)")
    return group, W4A8_VERSIONS[version]


def check_group(group: int, k: int, what: str, prefix: str) -> int:
    """Number of groups along an input dim of size k; G must divide k."""
    if group == 0:
        return 1
    if k % group:
        raise DescriptionError(f"{prefix}: group_size {group} does not divide the {what} "
                               f"{k}; accepted: a divisor of {k}, or 0 (per-channel)")
    return k // group


def two_level_scale(scale: torch.Tensor, second: torch.Tensor | None) -> torch.Tensor:
    """``(.., N, 1)`` per-channel times ``(.., N, G)`` per-group -> fp32 ``(.., N, G)``."""
    scale = scale.float()
    return scale if second is None else scale * second.float()


@register_scheme("W4A8_DYNAMIC", "linear")
class W4A8DynamicLinear(AscendLinearScheme):
    """Per-group int4 weights with two-level scales; legacy and 1.0.0 packed layouts."""

    def __init__(self, quant_description: dict[str, Any], prefix: str) -> None:
        super().__init__(quant_description, prefix)
        self.group_size, self.packed = w4a8_format(quant_description, prefix)

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        if n % 8 or (self.packed and any(w % 2 for w in output_partition_sizes)):
            raise self.tensor_error("weight", f"has {n} outputs {output_partition_sizes}; int4 "
                                    "packing needs a multiple of 8 (and even partitions)")
        groups = check_group(self.group_size, k, "input size per partition", self.prefix)
        self.k, self.n, self.groups, self.params_dtype = k, n, groups, params_dtype
        self.widths = list(output_partition_sizes)
        if self.packed:
            weight = PackedvLLMParameter(data=torch.empty(n // 2, k, dtype=torch.int8),
                                         input_dim=1, output_dim=0, packed_dim=0,
                                         packed_factor=2, weight_loader=weight_loader)
        else:
            weight = ModelWeightParameter(data=torch.empty(n, k, dtype=torch.int8),
                                          input_dim=1, output_dim=0, weight_loader=weight_loader)
        layer.register_parameter("weight", weight)
        # scales start as NaN (never loaded -> load-time error), offsets as 0
        for name, data in (("weight_scale", chk.unloaded(n, 1)),
                           ("weight_offset", torch.zeros(n, 1))):
            layer.register_parameter(name, ChannelQuantScaleParameter(
                data=data, output_dim=0, weight_loader=weight_loader))
        if self.group_size:
            for name, data in (("weight_scale_second", chk.unloaded(n, groups)),
                               ("weight_offset_second", torch.zeros(n, groups))):
                layer.register_parameter(name, GroupQuantScaleParameter(
                    data=data, input_dim=1, output_dim=0, weight_loader=weight_loader))
        if self.packed:
            self.bias_cols = SCALE_BIAS_CHUNKS if _is_row_parallel(layer) else 1
            layer.register_parameter("scale_bias", ChannelQuantScaleParameter(
                data=chk.unloaded(n, self.bias_cols), output_dim=0, weight_loader=weight_loader))

    def shard_of_index(self, name: str, index: tuple[int, ...]) -> int | None:
        """The fused shard (q/k/v, gate/up) owning output channel ``index[0]`` of ``name``."""
        if len(self.widths) < 2 or not index:
            return None
        channel = index[0] * (2 if self.packed and name == "weight" else 1)
        for shard, bound in enumerate(itertools.accumulate(self.widths)):
            if channel < bound:
                return shard
        return None

    def process_weights_after_loading(self, layer) -> None:
        """Validate, then convert either layout to ``weight`` int32 (K, N/8) and
        ``weight_scale`` (K/G, N) in the model dtype; offsets/second scales are dropped."""
        k, n, groups = self.k, self.n, self.groups

        def tensor(name, shape, dtype=None):
            return chk.loaded(layer, name, shape, self, dtype)

        if self.packed:
            values = unpack_int4_pairs(tensor("weight", (n // 2, k), torch.int8), dim=0)
            chk.finite(tensor("scale_bias", (n, self.bias_cols)), "scale_bias", self)
        else:
            values = chk.int_range(tensor("weight", (n, k), torch.int8), -8, 7, "weight", self)
        scale = chk.finite_nonzero(tensor("weight_scale", (n, 1)), "weight_scale", self)
        chk.all_zero(tensor("weight_offset", (n, 1)), "weight_offset", self)
        second = None
        if self.group_size:
            second = chk.finite_nonzero(tensor("weight_scale_second", (n, groups)),
                                        "weight_scale_second", self)
            chk.all_zero(tensor("weight_offset_second", (n, groups)), "weight_offset_second",
                         self)
        group_scale = two_level_scale(scale, second).t().contiguous()  # (G, N) fp32
        chk.replace_param(layer, "weight", kernel_int4(values.t()))
        chk.replace_param(layer, "weight_scale", group_scale.to(self.params_dtype))
        chk.drop_params(layer, "weight_offset", "weight_scale_second", "weight_offset_second",
                        "scale_bias")

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype."""
        scale = layer.weight_scale
        if scale.dtype != x.dtype:
            scale = scale.to(x.dtype)
        y = ops.npu_weight_quant_batchmatmul(
            x.reshape(-1, self.k), layer.weight, scale,
            antiquant_group_size=self.group_size if self.groups > 1 else 0)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.n)


def _is_row_parallel(layer: torch.nn.Module) -> bool:
    try:
        from vllm.model_executor.layers.linear import RowParallelLinear
    except ImportError:  # pragma: no cover - vLLM always has it
        return False
    return isinstance(layer, RowParallelLinear)
