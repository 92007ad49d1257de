"""One MoE layer's gating and routing as single C++ ops (``csrc/moe_routing.cpp``).

The reference ops in ``moe.py`` ask these functions first; each returns the op's outputs
when the arguments are a combination the C++ op covers and ``None`` otherwise, and the op
then runs its plain PyTorch math (the oracle, which also raises every error for bad input).
A layer's forward on the reference backend otherwise spends most of its time in the ~40
small tensor ops of these three functions, not in its GEMMs (``bench moe --parts layer``).

==============================  =============================================================
``npu_moe_gating_top_k_softmax``  x ``(N, E)`` fp32, no ``finished``. Bit-identical: the same
                                  softmax kernel, then a stable descending top-k in C++.
``npu_moe_init_routing_v2``       x ``(N, H)`` fp32/bf16/fp16, int32/int64 ids, quant_mode
                                  -1 without scale or 1 without scale (int8 rows through
                                  ``vllm_ascend::dynamic_quant_int8``, bit-identical to
                                  ``_dynamic_int8``), drop_pad_mode 0, expert_tokens_num_type
                                  0/1, row_idx_type 0. Bit-identical (a counting sort).
``npu_moe_finalize_routing``      rows ``(R, H)`` fp32/bf16, no skip1/skip2/bias, scales
                                  ``(N, K)`` or None. The same fp32 products as the
                                  reference, summed over K in ascending order where torch's
                                  sum may pair them: ``|y - real| <= 8 * 2**-24 * sum|terms|``
                                  (+ one bf16 rounding), ``tests/ut/device/test_moe_fast.py``.
==============================  =============================================================

Inputs off the CPU, ``force_exact`` (``VLLM_ASCEND_REFERENCE_EXACT=1``) and a build without
``vllm_ascend._C`` take the plain path. The C++ ops' meta kernels keep the token count
symbolic, so a compiled graph holds one op each.
"""

from __future__ import annotations

import torch

from vllm_ascend.device.reference import cpu_kernels

_ROUTED = (torch.float32, torch.bfloat16, torch.float16)
_IDS = (torch.int32, torch.int64)


def _on() -> bool:
    return not cpu_kernels.force_exact and cpu_kernels.native_available()


def gating_top_k_softmax(x: torch.Tensor, finished, k: int):
    """``npu_moe_gating_top_k_softmax(x, finished, k)`` or None (see the module table)."""
    if finished is not None or x.dim() != 2 or x.dtype != torch.float32 or not x.is_cpu \
            or not 1 <= k <= x.shape[1] or not _on():
        return None
    return torch.ops.vllm_ascend.moe_gating_topk_softmax(x, k)


def init_routing_v2(x: torch.Tensor, expert_idx: torch.Tensor, *, scale, offset, active_num,
                    expert_num, drop_pad_mode, expert_tokens_num_type,
                    expert_tokens_num_flag, quant_mode, active_expert_range, row_idx_type,
                    x_dtype):
    """``npu_moe_init_routing_v2(...)`` or None (see the module table)."""
    if scale is not None or offset is not None or drop_pad_mode != 0 or row_idx_type != 0 \
            or x_dtype is not None or quant_mode not in (-1, 1) \
            or expert_tokens_num_type not in (0, 1) or not isinstance(active_num, int) or not isinstance(expert_num, int):
        return None
    if x.dim() != 2 or expert_idx.dim() != 2 or expert_idx.shape[0] != x.shape[0] \
            or x.dtype not in _ROUTED or expert_idx.dtype not in _IDS or not x.is_cpu \
            or not expert_idx.is_cpu or x.shape[1] == 0 or not _on():
        return None
    if active_expert_range is not None and len(active_expert_range) > 0:
        if len(active_expert_range) != 2:
            return None
        start, end = (int(v) for v in active_expert_range)
        if not 0 <= start < end or (expert_num > 0 and end > expert_num):
            return None
    elif expert_num > 0:
        start, end = 0, expert_num
    else:
        return None  # the range comes from the ids' max: the plain path
    expanded_x, row_idx, tokens, expanded_scale = torch.ops.vllm_ascend.moe_init_routing(
        x, expert_idx, expert_num, start, end, active_num, expert_tokens_num_type,
        bool(expert_tokens_num_flag))
    if quant_mode == 1:
        if not expanded_x.shape[0]:
            return None
        expanded_x, row_scale = torch.ops.vllm_ascend.dynamic_quant_int8(expanded_x)
        # Rows past the filled ones stay int8 zeros with scale 0, as in the reference.
        filled = (row_idx >= 0).sum()
        expanded_scale = torch.where(torch.arange(expanded_x.shape[0]) < filled, row_scale,
                                     expanded_scale)
    return expanded_x, row_idx, tokens, expanded_scale


def finalize_routing(rows: torch.Tensor, skip1, skip2, bias, scales, src_to_dst: torch.Tensor,
                     export_for_source_row, drop_pad_mode: int, k: int):
    """``npu_moe_finalize_routing(...)`` or None (see the module table)."""
    if skip1 is not None or skip2 is not None or bias is not None \
            or drop_pad_mode not in (0, 1, 2, 3) or rows.dim() != 2 \
            or rows.dtype not in (torch.float32, torch.bfloat16) or not rows.is_cpu \
            or not src_to_dst.is_cpu or src_to_dst.dtype not in _IDS or not _on():
        return None
    if scales is not None:
        if scales.dim() != 2 or not scales.is_cpu or not scales.is_floating_point():
            return None
        k = scales.shape[-1]
    elif export_for_source_row is not None:
        k = export_for_source_row.shape[-1]
    total = src_to_dst.numel()
    if k < 1 or total % k or (scales is not None and scales.shape[0] * k != total) \
            or (export_for_source_row is not None
                and tuple(export_for_source_row.shape) != (total // k, k)):
        return None
    return torch.ops.vllm_ascend.moe_finalize_routing(rows, scales, src_to_dst, k,
                                                      drop_pad_mode in (2, 3))
