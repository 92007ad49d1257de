"""Reference ops: activations, norms, rotary embedding, prefetch
(torch_npu_ops.md, "Activations, norms, rotary, attention").

Math runs in fp32 (fp64 stays fp64) and results are cast back to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_ascend.device.reference import fused_fast, norm_rope_fast
from vllm_ascend.device.reference._common import (
    as_dtype,
    plain_dtype,
    row_groups,
    saturate_round,
)

ROTARY_MODES = ("half", "interleave")


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Upcast to at least fp32 (fp64 stays fp64; integers become fp32)."""
    if not t.is_floating_point():
        return t.to(torch.float32)
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _dynamic_int8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim) symmetric int8: ``scale = max|v| / 127``, ``y = round(v / scale)``.

    An all-zero row gets scale 1 (y = 0) instead of a 0/0. Returns (y int8, scale fp32
    of shape ``v.shape[:-1]``).
    """
    amax = v.abs().amax(dim=-1) if v.shape[-1] else v.new_zeros(v.shape[:-1])
    scale = amax / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = saturate_round(v / scale.unsqueeze(-1), -127, 127).to(torch.int8)
    return y, scale.to(torch.float32)


def _choice(arg: str, value, accepted: dict) -> None:
    """ValueError naming arg unless value is a key of accepted (value -> meaning)."""
    if value not in accepted:
        listed = ", ".join(f"{k!r} ({v})" for k, v in accepted.items())
        raise ValueError(f"{arg}={value!r}; accepted: {listed}")


def _int8_dst(dst_type, arg: str = "dst_type") -> None:
    dtype = as_dtype(dst_type, arg=arg)
    if dtype is not None and plain_dtype(dtype) != torch.int8:
        raise ValueError(f"{arg}={dst_type!r}; accepted: None, torch.int8 / qint8 (codes 1, 12)")


# ------------------------------------------------------------------------------- SwiGLU


def _swiglu(x: torch.Tensor, dim: int, activate_left: bool) -> torch.Tensor:
    """``silu(gate) * other`` where gate is the first half if activate_left else the second."""
    if x.shape[dim] % 2:
        raise ValueError(f"the size of dim {dim} must be even for SwiGLU, got {tuple(x.shape)}")
    first, second = x.chunk(2, dim=dim)
    return F.silu(first) * second if activate_left else F.silu(second) * first


def npu_swiglu(input, dim=-1):
    """SwiGLU: input ``(..., 2H, ...)`` split in halves ``a, b`` along dim;
    returns ``silu(a) * b`` ``(..., H, ...)`` in input's dtype (fp32 math)."""
    return _swiglu(_f32(input), dim, activate_left=True).to(input.dtype)


def _per_row(t, groups: torch.Tensor | None, num_groups: int, width: int, arg: str):
    """A per-group table ``(G, C)`` (or shared ``(C,)`` / ``(1, C)``) expanded to rows;
    groups: each row's group (rows past the last group, id G, take the last row)."""
    if t is None:
        return None
    t = _f32(t)
    if t.dim() not in (1, 2) or t.shape[-1] != width:
        raise ValueError(f"{arg} must be (G, {width}) or ({width},), got {tuple(t.shape)}")
    if t.dim() == 1 or t.shape[0] == 1:
        return t.reshape(1, -1)
    if groups is None or t.shape[0] != num_groups:
        raise ValueError(
            f"{arg} has {t.shape[0]} rows; it must be shared (1 row) or have one row per "
            f"group_index entry ({num_groups if groups is not None else 'group_index is None'})"
        )
    return t[groups.clamp(max=num_groups - 1)]


def npu_dequant_swiglu_quant(
    x, *, weight_scale=None, activation_scale=None, bias=None, quant_scale=None,
    quant_offset=None, group_index=None, activate_left=False, quant_mode=0, dst_type=None,
    round_mode=None, activate_dim=None, swiglu_mode=0, clamp_limit=7.0, glu_alpha=1.702,
    glu_bias=1.0,
):
    """Dequantise int32 accumulators, SwiGLU, per-row dynamic int8.

    x ``(T, 2H)`` int32 (or float); bias ``(2H,)``; weight_scale ``(G, 2H)`` (or
    ``(2H,)`` shared); activation_scale ``(T,)`` / ``(T, 1)``; quant_scale ``(G, H)``
    (or ``(H,)``) smooth scale; group_index ``(G,)`` per-group *row counts* (row r
    belongs to the group whose count range holds it; rows past the total are not
    computed and come out y = 0, scale = 0).
    ``v = (x + bias) * weight_scale[g] * activation_scale[t]``; ``a = silu(v2) * v1``
    for activate_left=False (``v1, v2`` the halves), ``silu(v1) * v2`` for True;
    ``a *= quant_scale[g]``; then ``scale = max|a| / 127``, ``y = round(a / scale)``.
    Returns (y int8 ``(T, H)``, scale fp32 ``(T,)``). Only quant_mode=1 (dynamic) is
    supported.
    """
    _choice("quant_mode", quant_mode, {1: "dynamic; static 0 is unsupported"})
    _choice("swiglu_mode", swiglu_mode, {0: "plain SwiGLU"})
    if quant_offset is not None:
        raise ValueError("quant_offset is only used by static quantisation; pass None")
    _choice("round_mode", round_mode, {None: "rint", 0: "rint"})
    if activate_dim not in (None, -1, x.dim() - 1):
        raise ValueError(f"activate_dim={activate_dim!r}; accepted: None, -1 (last dim)")
    _int8_dst(dst_type)
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"x must be (T, 2H) with an even last dim, got {tuple(x.shape)}")
    tokens = x.shape[0]

    gid, num_groups, computed = None, 0, None
    if group_index is not None:  # validated in eager only (row_groups): no data-dependent
        gid, computed = row_groups(group_index, tokens, False, "group_index")  # branches
        num_groups = group_index.numel()

    xs = x
    if bias is not None:
        if not x.is_floating_point() and not bias.is_floating_point():
            xs = xs + bias.to(x.dtype)  # exact integer accumulator + integer bias
        else:
            xs = _f32(xs) + _f32(bias)
    v = _f32(xs)
    dequant = _per_row(weight_scale, gid, num_groups, x.shape[1], "weight_scale")
    if dequant is not None:
        v = v * dequant
    if activation_scale is not None:
        if activation_scale.numel() != tokens:
            raise ValueError(
                f"activation_scale must be ({tokens},) or ({tokens}, 1), "
                f"got {tuple(activation_scale.shape)}"
            )
        v = v * _f32(activation_scale).reshape(-1, 1)
    a = _swiglu(v, -1, activate_left)
    smooth = _per_row(quant_scale, gid, num_groups, x.shape[1] // 2, "quant_scale")
    if smooth is not None:
        a = a * smooth
    y, scale = _dynamic_int8(a)
    if computed is not None:  # rows past the group total: not computed
        y = torch.where(computed[:, None], y, torch.zeros_like(y))
        scale = torch.where(computed, scale, torch.zeros_like(scale))
    return y, scale


# -------------------------------------------------------------------------------- norms


def _rms(x: torch.Tensor, gamma: torch.Tensor, epsilon: float):
    """fp32 ``(x * rstd * gamma, rstd)`` over the trailing ``gamma.dim()`` dims of x."""
    nd = gamma.dim()
    if tuple(x.shape[x.dim() - nd:]) != tuple(gamma.shape):
        raise ValueError(
            f"gamma shape {tuple(gamma.shape)} must match the trailing dims of the input "
            f"{tuple(x.shape)}"
        )
    xf = _f32(x)
    rstd = torch.rsqrt(xf.square().mean(dim=tuple(range(-nd, 0)), keepdim=True) + epsilon)
    return xf * rstd * _f32(gamma), rstd


def npu_rms_norm(input, gamma, epsilon=1e-06):
    """RMSNorm over the trailing ``gamma.dim()`` dims.

    input ``(..., H)``, gamma ``(H,)``. In fp32: ``rstd = 1 / sqrt(mean(x^2) + eps)``,
    ``y = x * rstd * gamma`` cast to input's dtype. Returns (y, rstd) with rstd fp32 of
    shape ``(..., 1)``.
    """
    fast = norm_rope_fast.rms_norm(input, gamma, epsilon)  # one C++ op where it applies
    if fast is not None:
        return fast
    y, rstd = _rms(input, gamma, epsilon)
    return y.to(input.dtype), rstd


def _add(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    if tuple(x1.shape) != tuple(x2.shape):
        raise ValueError(f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} must have the same shape")
    return (_f32(x1) + _f32(x2)).to(x1.dtype)


def npu_add_rms_norm(x1, x2, gamma, epsilon=1e-06):
    """Residual add then RMSNorm: x1, x2 ``(..., H)``, gamma ``(H,)``.

    ``x_sum = x1 + x2`` rounded to x1's dtype; ``y, rstd = rms_norm(x_sum)``.
    Returns (y, rstd, x_sum).
    """
    fast = norm_rope_fast.add_rms_norm(x1, x2, gamma, epsilon)  # one C++ op where it applies
    if fast is not None:
        return fast
    x_sum = _add(x1, x2)
    y, rstd = npu_rms_norm(x_sum, gamma, epsilon)
    return y, rstd, x_sum


def _static_int8(v: torch.Tensor, scales, zero_points, div_mode: bool) -> torch.Tensor:
    s = _f32(scales)
    q = v / s if div_mode else v * s
    if zero_points is not None:
        q = q + _f32(zero_points)
    return saturate_round(q, -128, 127).to(torch.int8)


def npu_add_rms_norm_quant(
    x1, x2, gamma, scales1, zero_points1, beta=None, scales2=None, zero_points2=None, *,
    axis=-1, epsilon=1e-06, div_mode=True, dst_type=None,
):
    """Residual add, RMSNorm, static int8 quantisation.

    x1, x2 ``(..., H)``; gamma, beta ``(H,)``; scales/zero_points ``(H,)`` or ``(1,)``.
    ``x_sum = x1 + x2`` (rounded to x1's dtype); ``n = rms_norm(x_sum) * gamma + beta``
    in fp32; ``y = round(n / scales + zp)`` (div_mode) or ``round(n * scales + zp)``,
    saturated to int8. Returns (y1, y2, x_sum); y2 is empty without scales2.
    """
    if axis not in (-1, x1.dim() - 1):
        raise ValueError(f"axis={axis!r}; accepted: -1 (last dim)")
    _int8_dst(dst_type)
    if scales2 is None:  # one output: csrc's fused kernel (fused_fast.py), same fp32 math
        fast = fused_fast.add_rms_norm_quant(x1, x2, gamma, beta, None, scales1, zero_points1,
                                             div_mode, epsilon)
        if fast is not None:
            return fast[0], torch.empty(0, dtype=torch.int8), fast[1]
    x_sum = _add(x1, x2)
    normed, _ = _rms(x_sum, gamma, epsilon)
    if beta is not None:
        normed = normed + _f32(beta)
    y1 = _static_int8(normed, scales1, zero_points1, div_mode)
    if scales2 is None:
        y2 = torch.empty(0, dtype=torch.int8)
    else:
        y2 = _static_int8(normed, scales2, zero_points2, div_mode)
    return y1, y2, x_sum


# ------------------------------------------------------------------------------- rotary


def _rotate(x: torch.Tensor, mode: str) -> torch.Tensor:
    """R(x). half: ``(x1, x2) -> (-x2, x1)``;
    interleave: each pair ``(x_even, x_odd) -> (-x_odd, x_even)``."""
    if mode not in ROTARY_MODES:
        raise ValueError(f"rotary_mode={mode!r}; accepted: {', '.join(map(repr, ROTARY_MODES))}")
    if x.shape[-1] % 2:
        raise ValueError(f"the last dim must be even for rotary embedding, got {tuple(x.shape)}")
    if mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def npu_rotary_mul(input, r1, r2, rotary_mode="half", rotate=None):
    """Rotary embedding: ``input * r1 + R(input) * r2`` (fp32 math, input's dtype).

    input ``(..., D)``; r1 (cos), r2 (sin) broadcastable to it with last dim D.
    rotary_mode 'half' or 'interleave' (see :func:`_rotate`).
    """
    if rotate is not None:
        raise ValueError("rotate (an explicit rotation matrix) is not supported; pass None")
    fast = norm_rope_fast.rotary_mul(input, r1, r2, rotary_mode)  # one C++ op where it applies
    if fast is not None:
        return fast
    for name, r in (("r1", r1), ("r2", r2)):
        if r.shape[-1] != input.shape[-1]:
            raise ValueError(f"{name} last dim {r.shape[-1]} must equal input's {input.shape[-1]}")
    try:
        torch.broadcast_shapes(input.shape, r1.shape, r2.shape)
    except RuntimeError as err:
        raise ValueError(f"r1/r2 must broadcast to input: {err}") from None
    xf = _f32(input)
    out = xf * _f32(r1) + _rotate(xf, rotary_mode) * _f32(r2)
    return out.to(input.dtype)


def npu_apply_rotary_pos_emb(query, key, cos, sin, layout="BSND", rotary_mode="half"):
    """Rotary embedding applied in place to query and key, which are returned.

    query ``(B, S, Nq, D)``, key ``(B, S, Nk, D)``, cos/sin ``(B, S, 1, D)`` (broadcast).
    """
    _choice("layout", layout, {"BSND": "batch, seq, heads, head_dim"})
    for name, t in (("query", query), ("key", key), ("cos", cos), ("sin", sin)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (BSND), got shape {tuple(t.shape)}")
    for name, t in (("query", query), ("key", key)):
        out = npu_rotary_mul(t, cos, sin, rotary_mode)
        if out.shape != t.shape:
            raise ValueError(
                f"cos/sin {tuple(cos.shape)} do not broadcast to {name} {tuple(t.shape)}"
            )
        t.copy_(out)
    return query, key


# ----------------------------------------------------------------------------- prefetch


def npu_prefetch(input, dependency, max_size, offset=0):
    """L2 prefetch hint: validates ``max_size > 0`` and ``0 <= offset < nbytes``; no-op."""
    if max_size <= 0:
        raise ValueError(f"max_size={max_size} must be > 0")
    nbytes = input.numel() * input.element_size()
    if not 0 <= offset < nbytes:
        raise ValueError(f"offset={offset} must satisfy 0 <= offset < nbytes={nbytes} of input")
    return None
