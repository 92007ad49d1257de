"""Reference ops: fused norm / SwiGLU / grouped int8 matmul + int8 quantisation
(torch_npu's ``npu_add_rms_norm_dynamic_quant``, ``npu_swiglu_quant``,
``npu_grouped_matmul_swiglu_quant``).

Each op is written in plain PyTorch (the oracle) and asks :mod:`fused_fast` first, whose C++
kernels (csrc/fused_quant.cpp) compute the same math in one pass per row. Nothing here has
data-dependent Python control flow outside eager-mode argument checks, so the ops trace under
``torch.compile`` with a symbolic row count.

Conventions shared by the three: dynamic int8 per row is ``scale = max|v| / 127`` (an all-zero
row: scale 1), ``y = round_half_even(v / scale)`` in [-127, 127]; group tables ``(G, C)``
index rows by group, with group_index / group_list either cumulative row ends or counts; rows
past the last group are not computed and come out ``y = 0, scale = 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_ascend.device.reference import fused_fast
from vllm_ascend.device.reference._common import (
    as_dtype,
    plain_dtype,
    row_groups,
    saturate_round,
)
from vllm_ascend.device.reference.activation import _add, _dynamic_int8, _f32, _rms


def _int8_only(value, arg: str) -> None:
    dtype = as_dtype(value, arg=arg)
    if dtype is not None and plain_dtype(dtype) != torch.int8:
        raise ValueError(f"{arg}={value!r}; accepted: None, torch.int8 / qint8 (codes 1, 12)")


def _group_table(t, gid, num_groups: int, width: int, arg: str):
    """``(G, C)`` per group (or shared ``(C,)`` / ``(1, C)``) -> fp32 ``(T, C)`` / ``(1, C)``."""
    t = _f32(t)
    if t.dim() not in (1, 2) or t.shape[-1] != width:
        raise ValueError(f"{arg} must be (G, {width}) or ({width},), got {tuple(t.shape)}")
    if t.dim() == 1 or t.shape[0] == 1:
        return t.reshape(1, -1)
    if gid is None or t.shape[0] != num_groups:
        raise ValueError(f"{arg} has {t.shape[0]} rows; it must be shared (1 row) or have one "
                         f"row per group ({num_groups if gid is not None else 'no groups'})")
    return t[gid.clamp(max=num_groups - 1)]


def _masked(y, scale, computed):
    """Zero y and scale of the rows not computed (``computed`` (T,) bool, or None)."""
    if computed is None:
        return y, scale
    return (torch.where(computed[:, None], y, torch.zeros_like(y)),
            torch.where(computed, scale, torch.zeros_like(scale)))


# ----------------------------------------------------------------- add + RMSNorm + quant


def npu_add_rms_norm_dynamic_quant(x1, x2, gamma, *, smooth_scale1=None, smooth_scale2=None,
                                   beta=None, epsilon=1e-06, output_mask=(), y_dtype=None):
    """Residual add, RMSNorm, per-row dynamic int8 (one or two quantised outputs).

    x1, x2 ``(..., H)``; gamma, beta, smooth_scale1/2 ``(H,)``. ``x = x1 + x2`` rounded to
    x1's dtype; ``n = x * rstd * gamma + beta`` in fp32 (rstd over the last dim);
    ``v_i = n * smooth_scale_i``; ``scale_i = max|v_i| / 127`` per row, ``y_i = round(v_i /
    scale_i)``. Output i is computed when ``output_mask[i]``; with an empty mask output 1
    always and output 2 when both smooth scales are given. Returns (y1 int8 ``(..., H)``,
    y2, x_out ``(..., H)`` x1's dtype, scale1 fp32 ``(...)``, scale2); outputs not computed
    are empty tensors.
    """
    _int8_only(y_dtype, "y_dtype")
    mask = list(output_mask or ())
    if mask and (len(mask) != 2 or not any(mask)):
        raise ValueError(f"output_mask={output_mask!r}; accepted: [] or two booleans, not both "
                         "False")
    want = mask if mask else [True, smooth_scale1 is not None and smooth_scale2 is not None]
    for i, s in enumerate((smooth_scale1, smooth_scale2)):
        if s is not None and not want[i]:
            raise ValueError(f"smooth_scale{i + 1} is given but output_mask[{i}] is False")
    h = x1.shape[-1]
    if not want[1]:
        fast = fused_fast.add_rms_norm_quant(x1, x2, gamma, beta, smooth_scale1, None, None,
                                             True, epsilon)
        if fast is not None:
            y, x_sum, scale = fast
            empty = torch.empty(0, dtype=torch.int8, device=x1.device)
            return y, empty, x_sum, scale, torch.empty(0, dtype=torch.float32, device=x1.device)
    x_sum = _add(x1, x2)
    normed, _ = _rms(x_sum, gamma, epsilon)
    if beta is not None:
        normed = normed + _f32(beta)
    outs = []
    for i, smooth in enumerate((smooth_scale1, smooth_scale2)):
        if not want[i]:
            outs.append((torch.empty(0, dtype=torch.int8, device=x1.device),
                         torch.empty(0, dtype=torch.float32, device=x1.device)))
            continue
        v = normed
        if smooth is not None:
            if tuple(smooth.shape) != (h,):
                raise ValueError(f"smooth_scale{i + 1} must be ({h},), got {tuple(smooth.shape)}")
            v = v * _f32(smooth)
        outs.append(_dynamic_int8(v))
    (y1, s1), (y2, s2) = outs
    return y1, y2, x_sum, s1, s2


# -------------------------------------------------------------------- SwiGLU + quant


def _swiglu_halves(v: torch.Tensor, activate_left: bool) -> torch.Tensor:
    a, b = v.chunk(2, dim=-1)
    return F.silu(a) * b if activate_left else a * F.silu(b)


def npu_swiglu_quant(x, *, smooth_scales=None, offsets=None, group_index=None,
                     activate_left=False, quant_mode=0, group_list_type=0, dst_type=None):
    """SwiGLU then int8 quantisation, optionally with per-group smooth scales.

    x ``(..., 2H)`` float, halves a | b: ``s = silu(a) * b`` (activate_left) or
    ``a * silu(b)``; smooth_scales / offsets ``(G, H)`` per group or ``(H,)`` shared;
    group_index ``(G,)`` cumulative row ends (group_list_type 0) or counts (1) over the rows
    of x flattened to ``(T, 2H)``. quant_mode 1 (dynamic): ``v = s * smooth[g]``, per-row
    ``scale = max|v| / 127``, ``y = round(v / scale)``; 0 (static): ``y = round(s * smooth[g]
    + offsets[g])`` saturated to int8 and scale is empty. Rows past the last group: y = 0,
    scale = 0. Returns (y int8 ``(..., H)``, scale fp32 ``(...)``).
    """
    if quant_mode not in (0, 1):
        raise ValueError(f"quant_mode={quant_mode!r}; accepted: 0 (static), 1 (dynamic)")
    if group_list_type not in (0, 1):
        raise ValueError(f"group_list_type={group_list_type!r}; accepted: 0 (cumulative "
                         "ends), 1 (counts)")
    _int8_only(dst_type, "dst_type")
    if x.dim() < 1 or x.shape[-1] % 2 or not x.is_floating_point():
        raise ValueError(f"x must be float (..., 2H) with an even last dim, got "
                         f"{tuple(x.shape)} {x.dtype}")
    if quant_mode == 1 and offsets is not None:
        raise ValueError("offsets are only used by static quantisation (quant_mode=0); "
                         "pass None")
    if quant_mode == 0 and smooth_scales is None:
        raise ValueError("static quantisation (quant_mode=0) needs smooth_scales")
    lead, h = x.shape[:-1], x.shape[-1] // 2
    if quant_mode == 1:
        fast = fused_fast.swiglu_quant(x, smooth_scales, group_index, group_list_type,
                                       activate_left)
        if fast is not None:
            return fast
    xf = _f32(x).reshape(-1, 2 * h)
    gid = computed = None
    num_groups = 0
    if group_index is not None:
        gid, computed = row_groups(group_index, xf.shape[0], group_list_type == 0,
                                   "group_index")
        num_groups = group_index.numel()
    v = _swiglu_halves(xf, activate_left)
    if smooth_scales is not None:
        v = v * _group_table(smooth_scales, gid, num_groups, h, "smooth_scales")
    if quant_mode == 0:
        if offsets is not None:
            v = v + _group_table(offsets, gid, num_groups, h, "offsets")
        y = saturate_round(v, -128, 127).to(torch.int8)
        if computed is not None:
            y = torch.where(computed[:, None], y, torch.zeros_like(y))
        return y.reshape(*lead, h), torch.empty(0, dtype=torch.float32, device=x.device)
    y, scale = _masked(*_dynamic_int8(v), computed)
    return y.reshape(*lead, h), scale.reshape(lead)


# ------------------------------------------------ grouped int8 matmul + SwiGLU + quant


def npu_grouped_matmul_swiglu_quant(x, weight, group_list, weight_scale, x_scale, *,
                                    bias=None, offset=None):
    """MoE W8A8 gate/up: grouped int8 matmul, dequantisation, SwiGLU, dynamic int8.

    x ``(M, K)`` int8; weight ``(E, K, N)`` int8; group_list ``(E,)`` cumulative row ends
    (rows ``[end[e-1], end[e])`` use expert e); weight_scale ``(E, N)``; x_scale ``(M,)``.
    ``c = (x @ weight[e]) * weight_scale[e] * x_scale[m]`` (exact integer sums, then fp32);
    ``s = silu(c[:, :N/2]) * c[:, N/2:]``; per-row ``scale = max|s| / 127``,
    ``y = round(s / scale)``. Returns (y int8 ``(M, N/2)``, scale fp32 ``(M,)``, offset fp32
    ``(M,)`` zeros: symmetric). Rows past the last end: y = 0, scale = 0. bias and offset are
    not supported (None), as on the device.
    """
    for name, value in (("bias", bias), ("offset", offset)):
        if value is not None:
            raise ValueError(f"{name} is not supported by npu_grouped_matmul_swiglu_quant; "
                             "pass None")
    if x.dtype != torch.int8 or weight.dtype != torch.int8 or x.dim() != 2 or weight.dim() != 3:
        raise ValueError(f"x must be int8 (M, K) and weight int8 (E, K, N), got x "
                         f"{tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} "
                         f"{weight.dtype}")
    m, k = x.shape
    e, kw, n = weight.shape
    if kw != k or n % 2:
        raise ValueError(f"weight (E, K, N) must have K = {k} and an even N, got "
                         f"{tuple(weight.shape)}")
    if tuple(weight_scale.shape) != (e, n) or x_scale.numel() != m:
        raise ValueError(f"weight_scale must be ({e}, {n}) and x_scale ({m},), got "
                         f"{tuple(weight_scale.shape)} and {tuple(x_scale.shape)}")
    if group_list.numel() != e:
        raise ValueError(f"group_list must have one entry per expert ({e}), got "
                         f"{tuple(group_list.shape)}")
    fast = fused_fast.grouped_matmul_swiglu_quant(x, weight, group_list, weight_scale, x_scale)
    if fast is not None:
        return fast
    gid, computed = row_groups(group_list, m, True, "group_list")
    xd = x.to(torch.float64)
    acc = x.new_zeros((m, n), dtype=torch.float64)
    for i in range(e):  # masked full products: no data-dependent shapes
        acc = torch.where((gid == i)[:, None], xd @ weight[i].to(torch.float64), acc)
    c = acc.to(torch.float32) * _f32(weight_scale)[gid.clamp(max=e - 1)]
    c = c * _f32(x_scale).reshape(-1, 1)
    y, scale = _masked(*_dynamic_int8(_swiglu_halves(c, True)), computed)
    return y, scale, torch.zeros_like(scale)
