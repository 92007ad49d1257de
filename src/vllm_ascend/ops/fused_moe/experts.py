"""The grouped expert MLP: ``y = (silu(x @ W_gate) * (x @ W_up)) @ W_down`` per local expert.

Rows arrive grouped by local expert (``group_list`` rows each, in expert order). The
seam for quantised schemes is :data:`ExpertsFn`: a W8A8_DYNAMIC / W4A8_DYNAMIC scheme
builds its own function over its weights and scales and passes it as ``experts_fn`` to
``moe_forward``; with ``dispatch_int8=True`` it receives int8 rows plus their per-row
scales (quantised during dispatch where the comm kernel can).
"""

from __future__ import annotations

from typing import Protocol

import torch

from vllm_ascend.device import fusion, ops


class ExpertsFn(Protocol):
    """hidden ``(rows, H)`` grouped by local expert; group_list ``(L,)`` int64 rows per
    expert; dynamic_scale ``(rows,)`` fp32 for int8 rows, else None -> ``(rows, H)``."""

    def __call__(self, hidden: torch.Tensor, group_list: torch.Tensor,
                 dynamic_scale: torch.Tensor | None) -> torch.Tensor: ...


def _gmm(x: torch.Tensor, weight: torch.Tensor, group_list: torch.Tensor) -> torch.Tensor:
    """Per expert e: its rows of ``x (rows, K)`` times ``weight[e] (K, N)``."""
    return ops.npu_grouped_matmul(
        [x], [weight], group_list=group_list, split_item=2, group_type=0, group_list_type=1,
    )[0]


def grouped_mlp(x_sorted: torch.Tensor, group_list: torch.Tensor, w13: torch.Tensor,
                w2: torch.Tensor) -> torch.Tensor:
    """Unquantised grouped SwiGLU MLP.

    x_sorted ``(rows, H)``; group_list ``(L,)`` int64 counts; w13 ``(L, H, 2I)`` with the
    gate in the first I columns and up in the last I; w2 ``(L, I, H)``. Returns
    ``(rows, H)`` in x's dtype (rows past ``sum(group_list)`` are 0).

    Runs the backend's fusion of the three ops where it offers one for these arguments
    (same math; see ``device.reference.moe_mlp_fast`` for its tolerance), else
    ``npu_grouped_matmul`` -> ``npu_swiglu`` -> ``npu_grouped_matmul``.
    """
    if x_sorted.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"x_sorted must be (rows, H), w13 (L, H, 2I), w2 (L, I, H); got "
                         f"{tuple(x_sorted.shape)}, {tuple(w13.shape)}, {tuple(w2.shape)}")
    if not x_sorted.is_floating_point():
        raise ValueError(f"grouped_mlp is unquantised: x_sorted must be floating, got "
                         f"{x_sorted.dtype}; quantised experts supply their own experts_fn")
    local, hidden, two_i = w13.shape
    if (w2.shape[0], w2.shape[1] * 2, w2.shape[2]) != (local, two_i, hidden) or \
            x_sorted.shape[1] != hidden or group_list.numel() != local:
        raise ValueError(f"shapes disagree: x_sorted {tuple(x_sorted.shape)}, group_list "
                         f"{tuple(group_list.shape)}, w13 {tuple(w13.shape)}, w2 "
                         f"{tuple(w2.shape)}; want (rows, H), (L,), (L, H, 2I), (L, I, H)")
    fused = fusion("grouped_swiglu_mlp")  # reference backend: device.reference.moe_mlp_fast
    if fused is not None:
        out = fused(x_sorted, group_list, w13, w2)
        if out is not None:
            return out
    gate_up = _gmm(x_sorted, w13, group_list)  # (rows, 2I)
    return _gmm(ops.npu_swiglu(gate_up), w2, group_list)  # (rows, H)


def local_swiglu_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                     w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor | None:
    """Dispatch + :func:`grouped_mlp` + combine in one backend call, for a rank that holds
    every expert (nothing travels), or None where the backend has no such fusion for these
    arguments (then run the comm method's steps).

    x ``(M, H)``; topk_weights ``(M, K)`` fp32; topk_ids ``(M, K)`` int32 expert ids in
    ``[0, L)``; w13 ``(L, H, 2I)``; w2 ``(L, I, H)`` -> ``(M, H)``:
    ``sum_j topk_weights[:, j] * mlp_{topk_ids[:, j]}(x)``.
    """
    fused = fusion("swiglu_moe")  # reference backend: device.reference.moe_mlp_fast
    return None if fused is None else fused(x, topk_weights, topk_ids, w13, w2)


def unquantized_experts(w13: torch.Tensor, w2: torch.Tensor) -> ExpertsFn:
    """The default :data:`ExpertsFn` over float weights (ignores dynamic_scale: None)."""

    def experts(hidden, group_list, dynamic_scale):
        if dynamic_scale is not None:
            raise ValueError("unquantised experts got int8 rows (dispatch_int8=True); "
                             "pass a quantised experts_fn")
        return grouped_mlp(hidden, group_list, w13, w2)

    return experts
