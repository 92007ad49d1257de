"""RMSNorm (with fused residual add) on ``npu_rms_norm`` / ``npu_add_rms_norm``."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.layernorm import RMSNorm

from vllm_ascend.device import ops
from vllm_ascend.quantization import norm_quant


class AscendRMSNorm(RMSNorm):
    """``y = w * x / sqrt(mean(x^2) + eps)``; with a residual, ``x + residual`` is normed too.

    Returns ``y``, or ``(y, x + residual)`` when ``residual`` is given (vLLM's contract).
    With :attr:`fuse_dynamic_quant` (set by ``quantization.norm_quant.enable`` when the only
    consumer quantises per token) and a residual, eager calls return ``y`` already quantised:
    int8 ``(..., H)`` carrying its per-token scale (``norm_quant.attach``).
    """

    fuse_dynamic_quant = False

    def forward_ascend(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.variance_size_override is not None or not self.has_weight:
            # Partial-width variance and weightless norms are not torch_npu semantics.
            return super().forward_native(x, residual)
        if residual is None:
            y, _rstd = ops.npu_rms_norm(x, self.weight, self.variance_epsilon)
            return y
        if self.fuse_dynamic_quant and not torch.compiler.is_compiling():
            yq, _, x_sum, scale, _ = ops.npu_add_rms_norm_dynamic_quant(
                x, residual, self.weight, epsilon=self.variance_epsilon)
            return norm_quant.attach(yq, scale), x_sum
        y, _rstd, x_sum = ops.npu_add_rms_norm(x, residual, self.weight, self.variance_epsilon)
        return y, x_sum

    # Eager on CPU (custom op enabled) and compiled (custom op disabled) take the same path.
    forward_cpu = forward_ascend
    forward_native = forward_ascend
    forward_oot = forward_ascend
