"""W4A8_DYNAMIC experts: int4 weights with two-level (channel x group) scales, int8 per-token
dynamic activations, computed by the A8W4 grouped matmul.

Checkpoint tensors (``E`` local experts, hidden ``H``, intermediate ``I`` on this rank,
``G`` = description ``group_size``, 256 when absent, 0 = per-channel; ``version`` as for the
linear scheme, :func:`~.w4a8_dynamic.w4a8_format`):

- ``w13_weight``: legacy ``(E, 2I, H)`` int8, one int4 per byte; 1.0.0 ``(E, I, H)`` int8,
  int4 pairs along the 2I dim. ``w2_weight``: legacy ``(E, H, I)``; 1.0.0 ``(E, H/2, I)``.
  vLLM loads them like weights (gate rows, then up rows).
- ``w13_weight_scale`` ``(E, 2I, 1)``, ``w2_weight_scale`` ``(E, H, 1)``: per-channel
  ``s_c``, loader kind ``"channel"``; ``*_weight_offset`` alike, must be 0.
- ``w13_weight_scale_second`` ``(E, 2I, H/G)``, ``w2_weight_scale_second`` ``(E, H, I/G)``
  (G > 0 only): per-group ``s_g``, loader kind ``"group"``; ``*_offset_second`` must be 0.
- 1.0.0 only, loaded as biases: ``w13_scale_bias`` ``(E, 2I, 1)`` fp32, the quantizer's
  ``8 * sum_k W_deq``; ``w2_scale_bias`` ``(E, H, 16)``, 16 partial sums over chunks of I
  (vllm-ascend registers ``16 / tp`` columns; here all 16 are kept and this rank sums its
  ``16 / tp``).

Processed (identical for both layouts): ``w13_weight`` int32 (E, H, 2I/8) and ``w2_weight``
int32 (E, I, H/8) kernel int4 packs; ``w13_weight_scale`` int64 (E, H/G, 2I) and
``w2_weight_scale`` int64 (E, I/G, H): ``s_c * s_g`` as encoded fp32 words (10-bit
mantissa, :func:`~._int4.encode_scale`); ``w13_scale_bias`` fp32 (E, 2I) and
``w2_scale_bias`` fp32 (E, H): ``8 * sum_k w[k, n] * s[g(k), n]`` computed from the weights
(the quantizer's scale_bias, when present, must agree within 1% of ``8 sum |w s|``).

Math (rows sorted by expert, ``group_list (E,)`` counts; s = the encoded scales)::

    xq, xs = dynamic_int8(x)
    h[m, n] = (sum_g s13[e, g, n] * sum_{k in g} (xq[m, k] - 8) w13[e, k, n] + b13[e, n]) * xs[m]
            = xs[m] * sum_g s13[e, g, n] * sum_{k in g} xq[m, k] * w13[e, k, n]
    a = silu(h[:, :I]) * h[:, I:];  aq, as = dynamic_int8(a)
    y = the same A8W4 product of aq with w2, b2, as

through ``npu_dynamic_quant -> npu_grouped_matmul -> npu_swiglu_quant ->
npu_grouped_matmul`` (with TP-sharded experts ``npu_swiglu`` then the TP-wide row quantisation
of ``_tp_quant``; the per-group scales are applied inside the matmul, so the
accumulators cannot leave it as int32 the way W8A8 does). Rows at or beyond
``sum(group_list)`` come out as 0.
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_ascend.device import ops
from vllm_ascend.quantization.methods import _moe_common as moe
from vllm_ascend.quantization.methods import _tensor_checks as chk
from vllm_ascend.quantization.methods._int4 import (
    decode_scale,
    encode_scale,
    kernel_int4,
    msd_bias,
    unpack_int4_pairs,
)
from vllm_ascend.quantization.methods._tp_quant import dynamic_quant_tp
from vllm_ascend.quantization.methods.base import AscendMoEScheme
from vllm_ascend.quantization.methods.registry import register_scheme
from vllm_ascend.quantization.methods.w4a8_dynamic import (
    SCALE_BIAS_CHUNKS,
    check_group,
    check_scale_bias,
    two_level_scale,
    w4a8_format,
)


@register_scheme("W4A8_DYNAMIC", "moe")
class W4A8DynamicMoE(AscendMoEScheme):
    """int4 experts (legacy or 1.0.0 packed) on the A8W4 grouped matmul."""

    def __init__(self, quant_description: dict[str, Any], prefix: str) -> None:
        super().__init__(quant_description, prefix)
        self.group_size, self.packed = w4a8_format(quant_description, prefix)

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition,
                       params_dtype, **extra_weight_attrs) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition
        if h % 8 or i % 4:
            raise self.tensor_error("w13_weight", f"hidden {h} / intermediate {i}: int4 packing "
                                    "needs H % 8 == 0 and 2I % 8 == 0")
        g13 = check_group(self.group_size, h, "hidden size", self.prefix)
        g2 = check_group(self.group_size, i, "intermediate size per partition", self.prefix)
        #: stem -> (experts, out, in, groups along in)
        self.dims = {"w13": (e, 2 * i, h, g13), "w2": (e, h, i, g2)}
        self.params_dtype = params_dtype
        for stem, (_, out, inp, groups) in self.dims.items():
            rows = out // 2 if self.packed else out
            moe.register(layer, f"{stem}_weight", torch.empty(e, rows, inp, dtype=torch.int8),
                         extra_weight_attrs)
            for kind, fill in (("scale", chk.unloaded), ("offset", torch.zeros)):
                moe.register(layer, f"{stem}_weight_{kind}", fill(e, out, 1),
                             extra_weight_attrs, quant_method=moe.CHANNEL)
                if self.group_size:
                    moe.register(layer, f"{stem}_weight_{kind}_second", fill(e, out, groups),
                                 extra_weight_attrs, quant_method=moe.GROUP)
        if self.packed:
            moe.register(layer, "w13_scale_bias", chk.unloaded(e, 2 * i, 1), extra_weight_attrs)
            moe.register(layer, "w2_scale_bias", chk.unloaded(e, h, SCALE_BIAS_CHUNKS),
                         extra_weight_attrs)

    def process_weights_after_loading(self, layer) -> None:
        for stem in self.dims:
            values, words, bias = self._convert(layer, stem)
            chk.replace_param(layer, f"{stem}_weight", kernel_int4(values))
            chk.replace_param(layer, f"{stem}_weight_scale", words)
            chk.replace_param(layer, f"{stem}_scale_bias", bias)
            chk.drop_params(layer, f"{stem}_weight_offset", f"{stem}_weight_scale_second",
                            f"{stem}_weight_offset_second")

    def _convert(self, layer, stem: str):
        """One projection -> (int4 values (E, in, out), scale words (E, G, out), bias (E, out))."""
        e, out, inp, groups = self.dims[stem]
        name = f"{stem}_weight"

        def tensor(suffix, shape, dtype=None):
            return chk.loaded(layer, name + suffix, shape, self, dtype)

        if self.packed:
            values = unpack_int4_pairs(tensor("", (e, out // 2, inp), torch.int8), dim=1)
        else:
            values = chk.int_range(tensor("", (e, out, inp), torch.int8), -8, 7, name, self)
        scale = chk.finite_nonzero(tensor("_scale", (e, out, 1)), f"{name}_scale", self)
        chk.all_zero(tensor("_offset", (e, out, 1)), f"{name}_offset", self)
        second = None
        if self.group_size:
            second = chk.finite_nonzero(tensor("_scale_second", (e, out, groups)),
                                        f"{name}_scale_second", self)
            chk.all_zero(tensor("_offset_second", (e, out, groups)), f"{name}_offset_second",
                         self)
        words = encode_scale(two_level_scale(scale, second).transpose(1, 2).contiguous())
        values = values.transpose(1, 2)  # (E, in, out): the grouped matmul's (K, N)
        kernel_scale = decode_scale(words)
        bias = msd_bias(values, kernel_scale)
        if self.packed:
            name, cols = f"{stem}_scale_bias", 1 if stem == "w13" else SCALE_BIAS_CHUNKS
            supplied = chk.finite(chk.loaded(layer, name, (e, out, cols), self), name, self)
            # w2's 16 partial sums over chunks of I: this rank owns 16 / tp of them
            check_scale_bias(self, name, supplied, bias, msd_bias(values.abs(),
                             kernel_scale.abs()), moe.moe_tp(layer) if cols > 1 else (0, 1))
        return values, words, bias

    def apply_experts(self, layer, x: torch.Tensor, group_list: torch.Tensor,
                      dynamic_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x (M, H)`` (float, or int8 with ``dynamic_scale (M,)``) -> ``(M, H)``."""
        # the live expert count: EPLB grows the loaded experts to its physical slots
        moe.check_group_list(group_list, layer.w13_weight.shape[0], self.prefix)
        out = moe.out_dtype(x, self.params_dtype)
        xq, xs = moe.quantize_rows(x, dynamic_scale, self.prefix)
        for stem in ("w13", "w2"):
            y = ops.npu_grouped_matmul(
                [xq], [getattr(layer, f"{stem}_weight")],
                scale=[getattr(layer, f"{stem}_weight_scale")],
                bias=[getattr(layer, f"{stem}_scale_bias")], per_token_scale=[xs],
                group_list=group_list, group_type=0, group_list_type=1, split_item=2,
                output_dtype=out)[0]
            if stem == "w13":
                tp_size = moe.moe_tp(layer)[1]
                if tp_size == 1:  # SwiGLU + per-row quantisation in one op
                    xq, xs = ops.npu_swiglu_quant(y, group_index=group_list, activate_left=True,
                                                  quant_mode=1, group_list_type=1)
                else:  # TP-sharded experts hold a slice of each intermediate row (_tp_quant)
                    xq, xs = dynamic_quant_tp(ops.npu_swiglu(y), tp_size)
        return moe.zero_rows_past_total(y, group_list)
