"""Per-token int8 quantisation of a tensor-parallel shard with the scale of the whole row.

A row-parallel layer (vLLM's ``RowParallelLinear``: ``o_proj``, ``down_proj``; the experts'
``w2`` when the experts are TP-sharded) sees only its rank's slice of each input row.
``npu_dynamic_quant`` on that slice would take each rank's own ``max|x|`` as the row's scale:
different arithmetic from one process, so TP2 would not reproduce single-card greedy tokens.
:func:`dynamic_quant_tp` takes the maximum over the TP group first (one small all-reduce of
one float per row), then rounds exactly as ``npu_dynamic_quant`` does
(``s = max|x| / 127``, 1 when not positive; ``q = clamp(round_half_even(x / s), -127, 127)``,
NaN to 0), so every rank holds the int8 values one process would hold. The partial int8
GEMMs then differ from one process only in the float rounding of the final TP sum.
"""

from __future__ import annotations

import torch

from vllm_ascend.device import ops


def _all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    from vllm.distributed import get_tp_group

    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=get_tp_group().device_group)
    return out


@torch.library.custom_op("vllm_ascend::tp_all_reduce_max", mutates_args=(), device_types="cpu")
def _all_reduce_max_op(x: torch.Tensor) -> torch.Tensor:
    return _all_reduce_max(x)


@_all_reduce_max_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def tp_all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``x`` over vLLM's TP group (on CPU an opaque op under
    torch.compile)."""
    return _all_reduce_max_op(x) if x.is_cpu else _all_reduce_max(x)


def quantize_with_row_max(x: torch.Tensor, row_max: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (M, K)`` and each row's ``max|x|`` (M,) -> (int8 (M, K), fp32 scale (M,)), with
    ``npu_dynamic_quant``'s rounding."""
    scale = row_max.float() / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    v = torch.nan_to_num(x.float() / scale[:, None], nan=0.0)
    return torch.round(v).clamp_(-127, 127).to(torch.int8), scale


def dynamic_quant_tp(x: torch.Tensor, tp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``npu_dynamic_quant(x)`` for ``x (M, K)`` one TP shard of each row (see the module
    docstring); plain ``npu_dynamic_quant`` when ``tp_size == 1``."""
    if tp_size == 1:
        return ops.npu_dynamic_quant(x)
    row_max = x.abs().amax(dim=-1).float() if x.shape[-1] else x.new_zeros(x.shape[0])
    return quantize_with_row_max(x, tp_all_reduce_max(row_max))
