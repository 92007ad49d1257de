"""CPU fast paths of the fused reference ops (``fused.py``, ``activation.npu_add_rms_norm_quant``):
csrc/fused_quant.cpp's ``vllm_ascend::add_rms_norm_quant`` and ``swiglu_dynamic_quant`` (SwiGLU
without smooth scales: torch's SwiGLU + csrc's ``dynamic_quant_int8``, see
:func:`swiglu_quant`), and
for ``npu_grouped_matmul_swiglu_quant`` csrc's ``grouped_matmul`` (exact int8 accumulators
through vLLM's oneDNN GEMM, the reference's fp32 epilogue) followed by
``swiglu_dynamic_quant``.

Each function returns None when its kernel does not apply (the op then runs its plain path,
which also raises the errors for bad input). The kernels keep the reference's fp32 math, in
one pass per row: results agree to fp32 rounding, int8 values within one step at rounding
boundaries (tests/ut/device/test_fused_quant_ops.py, against a float64 oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_ascend.device.reference import cpu_kernels
from vllm_ascend.device.reference import grouped_matmul as gmm

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _vec(t, h: int, allow_one: bool = False):
    """fp32 contiguous ``(h,)`` (or ``(1,)``) view of a parameter; False when it does not fit."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or not t.is_cpu or not t.is_floating_point() \
            or t.numel() not in ((h, 1) if allow_one else (h,)) or t.dim() > 2:
        return False
    return t.reshape(-1).float().contiguous()


def _usable() -> bool:
    return not cpu_kernels.force_exact and cpu_kernels.native_available()


def add_rms_norm_quant(x1, x2, gamma, beta, smooth, scales, zero_points, div_mode: bool,
                       epsilon: float):
    """(y int8 (..., H), x_sum (..., H) or (0,) without x2, scale fp32 (...) dynamic or (0,)
    static) or None. Dynamic without ``scales``; static with ``scales`` (H,)/(1,)."""
    if not _usable() or not isinstance(x1, torch.Tensor) or x1.dtype not in _FLOATS \
            or x1.dim() < 1 or not x1.is_cpu or x1.numel() == 0:
        return None
    h = x1.shape[-1]
    if x2 is not None and (not isinstance(x2, torch.Tensor) or x2.shape != x1.shape
                           or x2.dtype != x1.dtype or not x2.is_cpu):
        return None
    params = [_vec(gamma, h), _vec(beta, h), _vec(smooth, h), _vec(scales, h, True),
              _vec(zero_points, h, True)]
    if params[0] is None or any(p is False for p in params):
        return None
    a = x1.reshape(-1, h).contiguous()
    b = None if x2 is None else x2.reshape(-1, h).contiguous()
    y, x_sum, scale = torch.ops.vllm_ascend.add_rms_norm_quant(a, b, *params, bool(div_mode),
                                                               float(epsilon))
    lead = x1.shape[:-1]
    if b is not None:
        x_sum = x_sum.reshape(x1.shape)
    return y.reshape(x1.shape), x_sum, scale if scales is not None else scale.reshape(lead)


def swiglu_quant(x, smooth, group_index, group_list_type: int, activate_left: bool):
    """Dynamic ``npu_swiglu_quant`` -> (y int8 (..., H), scale fp32 (...)) or None.

    Without smooth scales: torch's SwiGLU in fp32 (``npu_swiglu``'s own math) then csrc's
    ``dynamic_quant_int8``, bit-identical to ``npu_dynamic_quant(npu_swiglu(x))`` on fp32
    input, so a single process quantises exactly as the TP-sharded path (``_tp_quant``) does.
    With smooth scales: csrc's one-pass ``swiglu_dynamic_quant``.
    """
    if not _usable() or x.dtype not in _FLOATS or not x.is_cpu or x.dim() < 1 \
            or x.numel() == 0 or x.shape[-1] % 2:
        return None
    h = x.shape[-1] // 2
    if smooth is None:
        return _swiglu_then_quant(x, group_index, group_list_type, activate_left)
    table = None
    if smooth is not None:
        if not smooth.is_cpu or not smooth.is_floating_point() or smooth.shape[-1] != h \
                or smooth.dim() not in (1, 2):
            return None
        table = smooth.reshape(-1, h).float().contiguous()
        if table.shape[0] != 1 and (group_index is None or table.shape[0] != group_index.numel()):
            return None
    gi = None
    if group_index is not None:
        if not isinstance(group_index, torch.Tensor) or not group_index.is_cpu \
                or group_index.dtype not in (torch.int32, torch.int64):
            return None
        gi = group_index.reshape(-1).to(torch.int64).contiguous()
    xf = x.reshape(-1, 2 * h).contiguous()
    y, scale = torch.ops.vllm_ascend.swiglu_dynamic_quant(xf, table, gi, int(group_list_type),
                                                          bool(activate_left))
    return y.reshape(*x.shape[:-1], h), scale.reshape(x.shape[:-1])


def _swiglu_then_quant(x, group_index, group_list_type: int, activate_left: bool):
    from vllm_ascend.device.reference._common import row_groups

    h = x.shape[-1] // 2
    a, b = x.reshape(-1, 2 * h).float().chunk(2, dim=-1)
    v = F.silu(a) * b if activate_left else a * F.silu(b)
    y, scale = torch.ops.vllm_ascend.dynamic_quant_int8(v)
    if group_index is not None:
        if not isinstance(group_index, torch.Tensor) or not group_index.is_cpu:
            return None
        _, computed = row_groups(group_index, y.shape[0], group_list_type == 0, "group_index")
        y = torch.where(computed[:, None], y, torch.zeros_like(y))
        scale = torch.where(computed, scale, torch.zeros_like(scale))
    return y.reshape(*x.shape[:-1], h), scale.reshape(x.shape[:-1])


def grouped_matmul_swiglu_quant(x, weight, group_list, weight_scale, x_scale):
    """(y int8 (M, N/2), scale (M,), offset zeros (M,)) or None. x int8 (M, K), weight int8
    (E, K, N), group_list (E,) cumulative ends, weight_scale (E, N), x_scale (M,)."""
    if not _usable() or not cpu_kernels.onednn_available() or not x.is_cpu \
            or not weight.is_cpu or x.shape[0] == 0 or x.shape[1] == 0:
        return None
    if not isinstance(group_list, torch.Tensor) or group_list.dtype not in (torch.int32,
                                                                             torch.int64):
        return None
    if weight_scale.dtype not in (torch.float32, torch.bfloat16) \
            or x_scale.dtype not in (torch.float32, torch.bfloat16):
        return None
    c = torch.ops.vllm_ascend.grouped_matmul(
        x.contiguous(), weight, group_list.reshape(-1), 0, None, weight_scale.contiguous(),
        x_scale.reshape(-1).contiguous(), 0, torch.float32, gmm._isa(), gmm.KERNEL_MAX_ROWS)
    y, scale = torch.ops.vllm_ascend.swiglu_dynamic_quant(
        c, None, group_list.reshape(-1).to(torch.int64).contiguous(), 0, True)
    return y, scale, torch.zeros_like(scale)
