"""Reference ops: quantisation, quant-param encoding and weight formats.

Math: ``shared/reference/torch_npu_ops.md`` ("Quantisation and matmul"). Everything is
computed in fp32 like the device; casts round half to even and saturate.

Choices where the contract leaves room (each pinned by a test in
``tests/ut/device/test_quant_ops.py``):

- ``npu_dynamic_quant``: a row whose scale ``max|v| / Q`` is 0 (all-zero row) gets
  scale **1.0** and ``y = 0`` (never NaN). In the MoE form, rows at or beyond the last
  ``group_index`` end are quantised without a smooth factor.
  ``npu_dynamic_quant_asymmetric`` likewise gives a constant row scale 1.0.
- ``npu_trans_quant_param(round_mode=1)`` rounds the fp32 pattern to 19 bits half to even
  (``round_mode=0``, the default, truncates as the doc says); the offset is rounded half
  to even and saturated to int9 ``[-256, 255]``.
- ``npu_format_cast`` returns a copy when the format changes (the input keeps its own
  format) and the input itself when it does not. The format is remembered per storage, so
  views, ``param.data = npu_format_cast(param.data, 29)`` and Parameters all report it.
"""

from __future__ import annotations

import weakref

import torch

from vllm_ascend.device.reference import cpu_kernels
# decode_quant_param is defined in _common (cpu_kernels needs it too) and stays part of this
# module's API.
from vllm_ascend.device.reference._common import decode_quant_param  # noqa: F401
from vllm_ascend.device.reference._common import as_dtype, pack_int4, saturate_round

#: Integer range of each quantised output type.
_RANGE = {
    torch.int8: (-128, 127),
    torch.uint8: (0, 255),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.quint4x2: (-8, 7),
}
#: ``npu_quantize`` target -> plain output dtype (int4 is packed into int32).
_QUANTIZE_TARGETS = {
    torch.qint8: torch.int8, torch.int8: torch.int8,
    torch.quint8: torch.uint8, torch.uint8: torch.uint8,
    torch.qint32: torch.int32, torch.int32: torch.int32,
    torch.quint4x2: torch.quint4x2,
}


def group_ends(index, num_groups: int, rows: int, *, arg: str) -> torch.Tensor:
    """Validate cumulative row ends (non-decreasing, in ``[0, rows]``, at most
    ``num_groups`` entries); return them as int64."""
    ends = torch.as_tensor(index).reshape(-1).to(torch.int64)
    if ends.numel() > num_groups:
        raise ValueError(
            f"{arg} has {ends.numel()} entries but there are only {num_groups} groups; "
            f"accepted: at most {num_groups} cumulative row ends")
    if ends.numel() and (bool((ends[1:] < ends[:-1]).any()) or int(ends[0]) < 0):
        raise ValueError(f"{arg}={ends.tolist()} must be non-negative and non-decreasing "
                         "(cumulative row ends)")
    if ends.numel() and int(ends[-1]) > rows:
        raise ValueError(f"{arg} ends at row {int(ends[-1])} but the input has only {rows} rows")
    return ends


def _rows_times_smooth(rows, smooth_scales, group_index):
    """``rows (R, H) * smooth``: one smooth vector (H,), or (E, H) chosen per row by
    cumulative ``group_index``; rows past the last end keep factor 1."""
    h = rows.shape[-1]
    if smooth_scales is None:
        if group_index is not None:
            raise ValueError("group_index needs smooth_scales of shape (E, H)")
        return rows
    s = smooth_scales.float()
    if group_index is None:
        if tuple(s.shape) != (h,):
            raise ValueError(f"smooth_scales must have shape ({h},), got {tuple(s.shape)}")
        return rows * s
    if s.dim() != 2 or s.shape[1] != h:
        raise ValueError(f"smooth_scales with group_index must have shape (E, {h}), "
                         f"got {tuple(s.shape)}")
    ends = group_ends(group_index, s.shape[0], rows.shape[0], arg="group_index")
    if ends.numel() != s.shape[0]:
        raise ValueError(f"group_index must have E={s.shape[0]} entries (one per smooth_scales "
                         f"row), got {ends.numel()}")
    group = torch.searchsorted(ends, torch.arange(rows.shape[0], device=rows.device), right=True)
    table = torch.cat([s, s.new_ones(1, h)])  # index E = past the last end
    return rows * table[group]


def _quant_rows(input, smooth_scales, group_index, dst_type):
    """Shared front of the dynamic quant ops: (fp32 rows (R, H), int dtype, leading shape)."""
    dst = as_dtype(dst_type, arg="dst_type") or torch.int8
    if dst not in (torch.int8, torch.quint4x2):
        raise ValueError(f"dst_type={dst} is not supported; accepted: torch.int8 (1), "
                         "torch.quint4x2 (16)")
    if not input.is_floating_point() or input.dim() < 1 or input.shape[-1] == 0:
        raise ValueError(f"input must be a floating tensor (..., H) with H > 0, got "
                         f"{input.dtype} {tuple(input.shape)}")
    h = input.shape[-1]
    if dst == torch.quint4x2 and h % 8:
        raise ValueError(f"dst_type=torch.quint4x2 needs input last dim H a multiple of 8, got {h}")
    rows = _rows_times_smooth(input.float().reshape(-1, h), smooth_scales, group_index)
    return rows, dst, input.shape[:-1]


def _pack_out(y, dst, lead):
    """int values (R, H) -> int8 (..., H) or packed int4 int32 (..., H/8)."""
    y = y.to(torch.int8)
    if dst == torch.quint4x2:
        y = pack_int4(y)
    return y.reshape(*lead, y.shape[-1])


def npu_dynamic_quant(input, *, smooth_scales=None, group_index=None, dst_type=None,
                      quant_mode="pertoken", dst_type_max=0.0):
    """Per-row symmetric dynamic quantisation.

    input (..., H) float; smooth_scales (H,) or (E, H) with group_index (E,) int32 cumulative
    row ends. Per row, in fp32: ``v = x * smooth``, ``scale = max|v| / Q`` (Q = 127 int8,
    7 int4), ``y = round(v / scale)``. Returns y int8 (..., H) — or for
    ``dst_type=torch.quint4x2`` int32 (..., H/8) packed — and scale fp32 (...,).
    An all-zero row gets scale 1 and y 0. ``dst_type_max`` only matters for float8 targets
    and is ignored.
    """
    if quant_mode != "pertoken":
        raise ValueError(f"quant_mode={quant_mode!r} is not supported; accepted: 'pertoken'")
    if smooth_scales is None and group_index is None and dst_type in (None, torch.int8):
        fast = cpu_kernels.dynamic_quant(input)  # same bits, compiled (cpu_kernels.py)
        if fast is not None:
            return fast
    rows, dst, lead = _quant_rows(input, smooth_scales, group_index, dst_type)
    q = 127.0 if dst == torch.int8 else 7.0
    scale = rows.abs().amax(dim=-1) / q
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = saturate_round(rows / scale[:, None], -q, q)
    return _pack_out(y, dst, lead), scale.reshape(lead)


def npu_dynamic_quant_asymmetric(input, *, smooth_scales=None, group_index=None, dst_type=None,
                                 quant_mode="pertoken", dst_type_max=0.0):
    """Per-row asymmetric dynamic quantisation -> (y, scale (...,), offset (...,)).

    Same inputs as :func:`npu_dynamic_quant`. With ``[lo, hi]`` the target range
    ([-128, 127] int8, [-8, 7] int4): ``scale = (max v - min v) / (hi - lo)``,
    ``offset = hi - max v / scale``, ``y = round(v / scale + offset)`` saturated.
    A constant row gets scale 1 (then ``y = hi`` and ``(y - offset) * scale`` recovers it).
    """
    if quant_mode != "pertoken":
        raise ValueError(f"quant_mode={quant_mode!r} is not supported; accepted: 'pertoken'")
    rows, dst, lead = _quant_rows(input, smooth_scales, group_index, dst_type)
    lo, hi = (-128.0, 127.0) if dst == torch.int8 else (-8.0, 7.0)
    vmax, vmin = rows.amax(dim=-1), rows.amin(dim=-1)
    scale = (vmax - vmin) / (hi - lo)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    offset = hi - vmax / scale
    y = saturate_round(rows / scale[:, None] + offset[:, None], lo, hi)
    return _pack_out(y, dst, lead), scale.reshape(lead), offset.reshape(lead)


def _along_axis(p: torch.Tensor, x: torch.Tensor, axis: int, arg: str) -> torch.Tensor:
    """fp32 ``p`` shaped to broadcast against ``x``: a scalar, a vector of
    ``x.shape[axis]`` laid along ``axis``, or any tensor broadcastable to x."""
    p = p.float()
    if p.numel() == 1:
        return p.reshape(())
    if p.dim() == 1 and p.shape[0] == x.shape[axis]:
        return p.reshape(p.shape[0], *([1] * (x.dim() - 1 - axis)))
    try:
        torch.broadcast_shapes(p.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"{arg} of shape {tuple(p.shape)} must be (1,), "
                         f"({x.shape[axis]},) for axis={axis}, or broadcastable to "
                         f"{tuple(x.shape)}") from None
    return p


def npu_quantize(input, scales, zero_points, dtype, axis=1, div_mode=True):
    """Static quantisation ``y = round(x / scales + zp)`` (``div_mode=False``:
    ``round(x * scales + zp)``), saturated to the target.

    input (...) float; scales/zero_points (1,), (input.shape[axis],) or broadcastable.
    dtype: qint8 -> int8, quint8 -> uint8, qint32 -> int32, quint4x2 -> [-8, 7] packed
    into int32 (..., last/8). The plain int8/uint8/int32 dtypes are accepted as synonyms.
    """
    dst = as_dtype(dtype, arg="dtype")
    if dst not in _QUANTIZE_TARGETS:
        raise ValueError(f"dtype={dst} is not supported; accepted: torch.qint8, torch.quint8, "
                         "torch.qint32, torch.quint4x2 (or codes 12, 13, 14, 16)")
    if not input.is_floating_point() or input.dim() == 0:
        raise ValueError(f"input must be a floating tensor with >= 1 dim, got {input.dtype} "
                         f"{tuple(input.shape)}")
    if not -input.dim() <= axis < input.dim():
        raise ValueError(f"axis={axis} out of range for a {input.dim()}-d input")
    axis %= input.dim()
    if dst == torch.quint4x2 and input.shape[-1] % 8:
        raise ValueError(f"dtype=torch.quint4x2 needs a last dim multiple of 8, got "
                         f"{tuple(input.shape)}")
    x = input.float()
    s = _along_axis(scales, x, axis, "scales")
    v = x / s if div_mode else x * s
    if zero_points is not None:
        v = v + _along_axis(zero_points, x, axis, "zero_points")
    lo, hi = _RANGE[_QUANTIZE_TARGETS[dst]]
    if dst in (torch.qint32, torch.int32):
        v = v.double()  # fp32 cannot hold the int32 bounds
    y = saturate_round(v, lo, hi)
    if dst == torch.quint4x2:
        return pack_int4(y.to(torch.int8))
    return y.to(_QUANTIZE_TARGETS[dst])


def npu_convert_weight_to_int4pack(weight, inner_k_tiles=0):
    """int32 (d0, d1) with values in [-8, 7], d1 % 8 == 0 -> int32 (d0, d1/8), element
    ``8j+t`` in bits ``4t..4t+3`` of word j."""
    if weight.dtype != torch.int32 or weight.dim() != 2 or weight.shape[-1] % 8:
        raise ValueError(f"weight must be int32 of shape (d0, d1) with d1 a multiple of 8, "
                         f"got {weight.dtype} {tuple(weight.shape)}")
    if weight.numel() and (int(weight.min()) < -8 or int(weight.max()) > 7):
        raise ValueError("weight values must be int4, in [-8, 7]")
    return pack_int4(weight)


def npu_trans_quant_param(scale, offset=None, round_mode=0):
    """fp32 scale (t,) or (1, n) [+ offset, same shapes] -> int64 quant param.

    Bits 0-31: the fp32 pattern with its low 13 bits cleared (``round_mode=0``; 1 rounds
    half to even instead); bit 46 set; bits 37-45: the offset as int9. 1-D inputs give
    shape (max(t_scale, t_offset),), a (1, n) scale gives (1, n).
    """
    if round_mode not in (0, 1):
        raise ValueError(f"round_mode={round_mode!r}; accepted: 0 (truncate), 1 (round)")
    for name, t in (("scale", scale), ("offset", offset)):
        if t is not None and not (t.dim() == 1 or (t.dim() == 2 and t.shape[0] == 1)):
            raise ValueError(f"{name} must have shape (t,) or (1, n), got {tuple(t.shape)}")
    s = scale.float()
    off = torch.zeros(1) if offset is None else offset.float()
    try:
        s, off = torch.broadcast_tensors(s, off.reshape(s.shape[:-1] + off.shape[-1:]))
    except RuntimeError:
        raise ValueError(f"offset of shape {tuple(offset.shape)} does not match scale of shape "
                         f"{tuple(scale.shape)}; accepted: (1,) or the same length") from None
    bits = s.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if round_mode == 1:
        bits = bits + 0xFFF + ((bits >> 13) & 1)
    bits = bits & 0xFFFFE000
    off9 = saturate_round(off, -256, 255).to(torch.int64) & 0x1FF
    return bits | (1 << 46) | (off9 << 37)


def decode_quant_offset(value: torch.Tensor) -> torch.Tensor:
    """int64 quant param -> the int9 offset it carries (bits 37-45), as fp32."""
    off = (value.to(torch.int64) >> 37) & 0x1FF
    return torch.where(off >= 256, off - 512, off).to(torch.float32)


#: ACL formats (acl_format codes).
ACL_FORMATS = {0: "NCHW", 1: "NHWC", 2: "ND", 3: "NC1HWC0", 4: "FRACTAL_Z", 12: "NC1HWC0_C04",
               16: "HWCN", 27: "NDHWC", 29: "FRACTAL_NZ", 30: "NCDHW", 32: "NDC1HWC0",
               33: "FRACTAL_Z_3D"}
FORMAT_ND = 2
# Storage objects are preserved by torch while any tensor uses them, so a weak map keyed on
# the storage follows the data through views, ``.data`` swaps and Parameters.
_FORMAT_OF: "weakref.WeakKeyDictionary[torch.UntypedStorage, int]" = weakref.WeakKeyDictionary()


def get_npu_format(tensor: torch.Tensor) -> int:
    """The ACL format code last given to this tensor's storage; ND (2) by default."""
    try:
        return _FORMAT_OF.get(tensor.untyped_storage(), FORMAT_ND)
    except (RuntimeError, NotImplementedError, TypeError):
        return FORMAT_ND


def _check_format(acl_format) -> int:
    if isinstance(acl_format, bool) or not isinstance(acl_format, int) \
            or acl_format not in ACL_FORMATS:
        raise ValueError(f"acl_format={acl_format!r} is not a format code; accepted: "
                         + ", ".join(f"{k} ({v})" for k, v in ACL_FORMATS.items()))
    return acl_format


def npu_format_cast(input, acl_format, *, customize_dtype=None, input_dtype=None):
    """Change the physical layout (identity on shape and values here).

    Returns ``input`` when it already has ``acl_format``, else a contiguous copy that
    :func:`get_npu_format` reports as ``acl_format``. The dtype hints are validated and
    otherwise ignored.
    """
    fmt = _check_format(acl_format)
    as_dtype(customize_dtype, arg="customize_dtype")
    as_dtype(input_dtype, arg="input_dtype")
    if get_npu_format(input) == fmt:
        return input
    out = input.clone(memory_format=torch.contiguous_format)
    _FORMAT_OF[out.untyped_storage()] = fmt
    return out


def npu_format_cast_(input, acl_format, *, customize_dtype=None, input_dtype=None):
    """In-place form: ``acl_format`` is a format code, or a tensor whose format to adopt.
    Values are unchanged; returns ``input``."""
    fmt = get_npu_format(acl_format) if isinstance(acl_format, torch.Tensor) \
        else _check_format(acl_format)
    as_dtype(customize_dtype, arg="customize_dtype")
    as_dtype(input_dtype, arg="input_dtype")
    _FORMAT_OF[input.untyped_storage()] = fmt
    return input

