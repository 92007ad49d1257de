"""RMSNorm (with fused residual add) on ``npu_rms_norm`` / ``npu_add_rms_norm``."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.layernorm import RMSNorm

from vllm_ascend.device import ops


class AscendRMSNorm(RMSNorm):
    """``y = w * x / sqrt(mean(x^2) + eps)``; with a residual, ``x + residual`` is normed too.

    Returns ``y``, or ``(y, x + residual)`` when ``residual`` is given (vLLM's contract).
    """

    def forward_ascend(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.variance_size_override is not None or not self.has_weight:
            # Partial-width variance and weightless norms are not torch_npu semantics.
            return super().forward_native(x, residual)
        if residual is None:
            y, _rstd = ops.npu_rms_norm(x, self.weight, self.variance_epsilon)
            return y
        y, _rstd, x_sum = ops.npu_add_rms_norm(x, residual, self.weight, self.variance_epsilon)
        return y, x_sum

    # Eager on CPU (custom op enabled) and compiled (custom op disabled) take the same path.
    forward_cpu = forward_ascend
    forward_native = forward_ascend
    forward_oot = forward_ascend
