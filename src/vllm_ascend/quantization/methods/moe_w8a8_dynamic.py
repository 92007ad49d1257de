"""W8A8_DYNAMIC experts: int8 per-channel weights, int8 per-token dynamic activations.

Checkpoint tensors (per layer, ``E`` local experts, hidden ``H``, intermediate ``I`` on this
rank; vLLM fuses gate_proj/up_proj into ``w13`` and loads down_proj as ``w2``):

=================  =============  ======================================
tensor             shape          loaded by vLLM's expert loader as
=================  =============  ======================================
w13_weight         (E, 2I, H) i8  weight (gate rows, then up rows)
w2_weight          (E, H, I) i8   weight
w13_weight_scale   (E, 2I, 1)     quant_method "channel"
w13_weight_offset  (E, 2I, 1)     "channel"; must be 0 (symmetric)
w2_weight_scale    (E, H, 1)      "channel"
w2_weight_offset   (E, H, 1)      "channel"; must be 0
=================  =============  ======================================

Processed: ``w13_weight`` (E, H, 2I) and ``w2_weight`` (E, I, H) int8 (the grouped matmul's
(K, N) layout), ``w13_weight_scale`` fp32 (E, 2I), ``w2_weight_scale`` (E, H) in bf16 for a
bf16 model, else fp32 (the dtype the device's per-token epilogue pairs with the output).

Math, for rows ``x (M, H)`` sorted by expert with per-expert counts ``group_list (E,)``;
row m belongs to expert e(m)::

    xq, xs = dynamic_int8(x)                            # ops.npu_dynamic_quant
    h = (xq @ w13[e]) * s13[e] * xs                     # ops.npu_grouped_matmul_swiglu_quant:
    a = silu(h[:, :I]) * h[:, I:];  aq, as = dynamic_int8(a)    # one fused op
    y = (aq @ w2[e]) * s2[e] * as                       # ops.npu_grouped_matmul

The fused op activates the *first* half (vLLM's SwiGLU) and takes the experts' cumulative
row ends. Rows at or beyond
``sum(group_list)`` belong to no expert and come out as 0.
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_ascend.device import ops
from vllm_ascend.quantization.methods import _moe_common as moe
from vllm_ascend.quantization.methods import _tensor_checks as chk
from vllm_ascend.quantization.methods.base import AscendMoEScheme
from vllm_ascend.quantization.methods.registry import register_scheme


@register_scheme("W8A8_DYNAMIC", "moe")
class W8A8DynamicMoE(AscendMoEScheme):
    """int8 experts with per-channel weight scales and per-token activation scales."""

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition,
                       params_dtype, **extra_weight_attrs) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition
        self.shapes = {"w13": (e, 2 * i, h), "w2": (e, h, i)}
        self.params_dtype = params_dtype
        for stem, (_, out, inp) in self.shapes.items():
            moe.register(layer, f"{stem}_weight", torch.empty(e, out, inp, dtype=torch.int8),
                         extra_weight_attrs)
            for kind, fill in (("scale", chk.unloaded), ("offset", torch.zeros)):
                moe.register(layer, f"{stem}_weight_{kind}", fill(e, out, 1),
                             extra_weight_attrs, quant_method=moe.CHANNEL)

    def process_weights_after_loading(self, layer) -> None:
        w2_scale_dtype = torch.bfloat16 if self.params_dtype == torch.bfloat16 else torch.float32
        for stem, (e, out, inp) in self.shapes.items():
            name = f"{stem}_weight"
            weight = chk.loaded(layer, name, (e, out, inp), self, torch.int8)
            scale = chk.finite_nonzero(chk.loaded(layer, f"{name}_scale", (e, out, 1), self),
                                       f"{name}_scale", self)
            chk.all_zero(chk.loaded(layer, f"{name}_offset", (e, out, 1), self),
                         f"{name}_offset", self)
            chk.replace_param(layer, name, weight.transpose(1, 2).contiguous())
            dtype = torch.float32 if stem == "w13" else w2_scale_dtype
            chk.replace_param(layer, f"{name}_scale", scale.reshape(e, out).to(dtype))
            chk.drop_params(layer, f"{name}_offset")

    def apply_experts(self, layer, x: torch.Tensor, group_list: torch.Tensor,
                      dynamic_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x (M, H)`` (float, or int8 with ``dynamic_scale (M,)``) -> ``(M, H)``."""
        # the live expert count: EPLB grows the loaded experts to its physical slots
        moe.check_group_list(group_list, layer.w13_weight.shape[0], self.prefix)
        out = moe.out_dtype(x, self.params_dtype)
        xq, xs = moe.quantize_rows(x, dynamic_scale, self.prefix)
        groups: dict[str, Any] = dict(group_list=group_list, group_type=0, group_list_type=1,
                                      split_item=2)
        aq, a_scale, _ = ops.npu_grouped_matmul_swiglu_quant(
            xq, layer.w13_weight, group_list.cumsum(0), layer.w13_weight_scale, xs)
        y = ops.npu_grouped_matmul([aq], [layer.w2_weight], scale=[layer.w2_weight_scale],
                                   per_token_scale=[a_scale], output_dtype=out, **groups)[0]
        return moe.zero_rows_past_total(y, group_list)
