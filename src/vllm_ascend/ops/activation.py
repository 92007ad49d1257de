"""SiluAndMul on ``npu_swiglu``: ``silu(x[..., :d]) * x[..., d:]``."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.activation import SiluAndMul

from vllm_ascend.device import ops


class AscendSiluAndMul(SiluAndMul):
    def forward_ascend(self, x: torch.Tensor) -> torch.Tensor:
        return ops.npu_swiglu(x, dim=-1)

    forward_cpu = forward_ascend
    forward_native = forward_ascend
    forward_oot = forward_ascend
