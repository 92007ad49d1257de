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
scale_bias (1.0.0 only)   (N, 1) / (N, 16)  quantizer's A8W4 bias ``8 * sum_k w s``; 16
                                            partial sums over chunks of K on row-parallel
                                            layers. Checked against the weights.
========================  ================  ============================================

The description's ``version`` picks the weight layout: ``"1.0.0"`` packed pairs, absent or
``"0"`` legacy; anything else is a :class:`DescriptionError`.

After :meth:`process_weights_after_loading` both layouts are the same tensors:
``weight`` int32 ``(K, N/8)`` (kernel int4 pack), ``weight_scale`` fp32 ``(K/G, N)`` (or
``(1, N)`` for G = 0), ``weight_scale[g, n] = s_c[n] * s_g[n, g]``, and ``scale_bias`` fp32
``(N,)`` = ``8 * sum_k w[k, n] * weight_scale[g(k), n]`` computed from the weights (this
rank's K slice; a 1.0.0 checkpoint's own ``scale_bias`` must agree within 1% of
``8 * sum_k |w s|``).

Math: int8 per-token dynamic activations (W4A8), on the same A8W4 grouped matmul as the
W4A8_DYNAMIC experts (one group: the list form of ``npu_grouped_matmul``)::

    xq, xs = npu_dynamic_quant(x)        # whole-row scale on row-parallel layers (_tp_quant)
    y[m, n] = (sum_g weight_scale[g, n] * sum_{k in g} (xq[m, k] - 8) * w[k, n]
               + scale_bias[n]) * xs[m]
            = xs[m] * sum_g weight_scale[g, n] * sum_{k in g} xq[m, k] * w[k, n]   (+ bias[n])

(the A8W4 kernel multiplies ``x - 8``, see ``device/reference/matmul._a8w4``; ``scale_bias``
restores ``x @ W``). Upstream vllm-ascend's W4A8_DYNAMIC *linear* keeps float activations
(``npu_weight_quant_batchmatmul``); this plugin quantises them, as the scheme's name says and
as its experts do: the integer dot products are what make int4 fast on a CPU too (VNNI).
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
from vllm_ascend.quantization import norm_quant
from vllm_ascend.quantization.errors import DescriptionError
from vllm_ascend.quantization.methods import _tensor_checks as chk
from vllm_ascend.quantization.methods._int4 import kernel_int4, msd_bias, unpack_int4_pairs
from vllm_ascend.quantization.methods._tp_quant import dynamic_quant_tp
from vllm_ascend.quantization.methods.base import AscendLinearScheme
from vllm_ascend.quantization.methods.registry import register_scheme

#: ``version`` values of quant_model_description.json -> True for the packed-pairs layout.
W4A8_VERSIONS = {"0": False, "1.0.0": True}
DEFAULT_GROUP_SIZE = 256
#: scale_bias columns of row-parallel layers in the 1.0.0 format (partial sums over 16
#: chunks of K; column-parallel layers have one).
SCALE_BIAS_CHUNKS = 16
#: A checkpoint's scale_bias must match the weights' within this share of 8 * sum_k |w s|.
SCALE_BIAS_RTOL = 1e-2


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


def check_scale_bias(scheme, name: str, supplied: torch.Tensor, bias: torch.Tensor,
                     magnitude: torch.Tensor, tp: tuple[int, int]) -> None:
    """A 1.0.0 checkpoint's ``scale_bias`` ``(..., out, cols)`` must match ``bias``
    ``(..., out)`` computed from the weights within SCALE_BIAS_RTOL of ``magnitude``
    (``8 * sum_k |w s|``). ``cols > 1`` columns are partial sums over chunks of K, split over
    the tensor-parallel group ``tp = (rank, size)``: this rank checks its share."""
    cols = supplied.shape[-1]
    rank, size = tp
    if cols > 1:
        if cols % size:
            raise scheme.tensor_error(name, f"holds {cols} partial sums, which cannot be split "
                                      f"over tensor-parallel size {size}")
        per = cols // size
        supplied = supplied[..., rank * per:(rank + 1) * per]
    total = supplied.float().sum(dim=-1)
    bad = (total - bias).abs() > SCALE_BIAS_RTOL * magnitude + 1e-6
    if bool(bad.any()):
        idx = tuple(int(v) for v in bad.nonzero()[0])
        where = f"channel {idx[0]}" if len(idx) == 1 else f"(expert, channel) {idx}"
        raise scheme.tensor_error(name, f"holds {total[idx].item():.6g} at {where}, but "
                                  f"8 * sum_k w * scale from the weights is "
                                  f"{bias[idx].item():.6g}")


@register_scheme("W4A8_DYNAMIC", "linear")
class W4A8DynamicLinear(AscendLinearScheme):
    """Per-group int4 weights with two-level scales (legacy and 1.0.0 packed layouts) x int8
    per-token dynamic activations."""

    #: (rank, size) of the tensor-parallel group when the layer is row-parallel, else (0, 1).
    row_tp = (0, 1)

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
        """Validate, then convert either layout to ``weight`` int32 (K, N/8), ``weight_scale``
        fp32 (K/G, N) and ``scale_bias`` fp32 (N,); offsets / second scales are dropped."""
        k, n, groups = self.k, self.n, self.groups

        def tensor(name, shape, dtype=None):
            return chk.loaded(layer, name, shape, self, dtype)

        self.row_tp = _row_parallel_tp(layer)
        if self.packed:
            values = unpack_int4_pairs(tensor("weight", (n // 2, k), torch.int8), dim=0)
            supplied = chk.finite(tensor("scale_bias", (n, self.bias_cols)), "scale_bias", self)
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
        kn = values.t()  # (K, N)
        scale_bias = msd_bias(kn, group_scale)
        if self.packed:
            check_scale_bias(self, "scale_bias", supplied, scale_bias,
                             msd_bias(kn.abs(), group_scale.abs()), self.row_tp)
        chk.replace_param(layer, "weight", kernel_int4(kn))
        chk.replace_param(layer, "weight_scale", group_scale)
        chk.replace_param(layer, "scale_bias", scale_bias)
        chk.drop_params(layer, "weight_offset", "weight_scale_second", "weight_offset_second")

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype (float x), or int8 x from a fused norm
        (``norm_quant``) -> the model dtype."""
        xs = norm_quant.token_scale(x)  # rows already quantised by a fused norm
        if xs is None:
            xq, xs = dynamic_quant_tp(x.reshape(-1, self.k), self.row_tp[1])
        else:
            xq = x.reshape(-1, self.k)
        y = ops.npu_grouped_matmul([xq], [layer.weight], scale=[layer.weight_scale],
                                   bias=[layer.scale_bias], per_token_scale=[xs],
                                   output_dtype=x.dtype if x.is_floating_point()
                                   else self.params_dtype)[0]
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.n)


def _row_parallel_tp(layer: torch.nn.Module) -> tuple[int, int]:
    """(rank, size) of the TP group of a row-parallel layer (input sharded), else (0, 1)."""
    if not _is_row_parallel(layer):
        return 0, 1
    return int(getattr(layer, "tp_rank", 0)), int(getattr(layer, "tp_size", 1))


def _is_row_parallel(layer: torch.nn.Module) -> bool:
    try:
        from vllm.model_executor.layers.linear import RowParallelLinear
    except ImportError:  # pragma: no cover - vLLM always has it
        return False
    return isinstance(layer, RowParallelLinear)
