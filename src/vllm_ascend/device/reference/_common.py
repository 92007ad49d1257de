"""Conventions shared by the reference operators (torch_npu_ops.md, "Conventions").

- dtype arguments accept a ``torch.dtype`` or torch_npu's integer code;
- casting rounds half to even and saturates (``torch.round`` then clamp);
- int4 values are packed eight to an int32, element ``8j+t`` in bits ``4t..4t+3``.
"""

from __future__ import annotations

import torch

#: torch_npu integer dtype codes (ACL numbering).
DTYPE_CODES: dict[int, torch.dtype] = {
    1: torch.int8,
    3: torch.int32,
    5: torch.float16,
    6: torch.float32,
    12: torch.qint8,
    13: torch.quint8,
    14: torch.qint32,
    15: torch.bfloat16,
    16: torch.quint4x2,
}

#: Quantized torch dtypes map to the plain integer dtypes the ops return.
_PLAIN = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}


def as_dtype(value: "int | torch.dtype | None", *, arg: str = "dtype") -> torch.dtype | None:
    """Normalise a dtype argument given as torch.dtype, integer code, or None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, int) and value in DTYPE_CODES:
        return DTYPE_CODES[value]
    raise ValueError(
        f"{arg}={value!r} is not a supported dtype; accepted: a torch.dtype or one of "
        + ", ".join(f"{k} ({v})" for k, v in DTYPE_CODES.items())
    )


def plain_dtype(dtype: torch.dtype) -> torch.dtype:
    """qint8 -> int8, quint8 -> uint8, qint32 -> int32; others unchanged."""
    return _PLAIN.get(dtype, dtype)


def saturate_round(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Round half to even, then clamp to [lo, hi]."""
    return torch.round(x).clamp_(lo, hi)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Pack int4 values (any integer dtype, in [-8, 7]) along the last dim into int32.

    The last dimension must be a multiple of 8; element ``8j+t`` goes to bits ``4t..4t+3``
    of output element ``j`` as a two's-complement nibble.
    """
    if values.shape[-1] % 8 != 0:
        raise ValueError(f"int4 packing needs a last dim multiple of 8, got {tuple(values.shape)}")
    nib = (values.to(torch.int64) & 0xF).reshape(*values.shape[:-1], values.shape[-1] // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=values.device)
    word = (nib << shifts).sum(dim=-1)
    # Reinterpret the unsigned 32-bit word as signed int32.
    word = torch.where(word >= 2**31, word - 2**32, word)
    return word.to(torch.int32)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int32 ``[..., n]`` -> int8 ``[..., 8n]`` in [-8, 7]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nib = (packed.unsqueeze(-1) >> shifts) & 0xF
    nib = torch.where(nib >= 8, nib - 16, nib)
    return nib.reshape(*packed.shape[:-1], packed.shape[-1] * 8).to(torch.int8)


def unpack_kn(w: torch.Tensor, k: int, arg: str) -> torch.Tensor:
    """int32-packed int4 -> int8 (..., k, n): packed along n as (..., k, n/8), or a
    transposed view of (..., n, k/8) packed along k."""
    if w.dim() >= 2 and w.shape[-2] == k:
        return unpack_int4(w)
    if w.dim() >= 2 and w.shape[-2] * 8 == k:
        return unpack_int4(w.transpose(-1, -2)).transpose(-1, -2)
    raise ValueError(f"{arg}: packed int4 (int32) must be (k, n/8) or a transposed view of "
                     f"(n, k/8) with k={k}, got {tuple(w.shape)}")


def int_weight(w: torch.Tensor, k: int, arg: str) -> torch.Tensor:
    """int8 (..., k, n) or int32-packed int4 -> int8 values (..., k, n)."""
    if w.dtype == torch.int32:
        return unpack_kn(w, k, arg)
    if w.dtype != torch.int8 or w.dim() < 2 or w.shape[-2] != k:
        raise ValueError(f"{arg} must be int8 (k={k}, n) or int32-packed int4, got "
                         f"{w.dtype} {tuple(w.shape)}")
    return w


def decode_quant_param(value: torch.Tensor) -> torch.Tensor:
    """int64 quant param -> the fp32 scale it carries (bits 0-31, low 13 bits cleared)."""
    bits = value.to(torch.int64) & 0xFFFFE000
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return bits.view(torch.float32)


def row_groups(group_index: torch.Tensor, rows: int, cumulative: bool, arg: str):
    """Group of each row for ``group_index (G,)`` ends (cumulative) or counts.

    Returns (gid (rows,) int64 in [0, G], computed (rows,) bool); gid G marks rows past the
    last group. Validates (non-negative counts, ends <= rows) in eager mode only: the check
    reads the data, which a compiled graph must not branch on.
    """
    g = group_index.reshape(-1).to(torch.int64)
    ends = g if cumulative else g.cumsum(0)
    if not torch.compiler.is_compiling():
        steps = torch.diff(ends, prepend=ends.new_zeros(1))
        if bool((steps < 0).any()) or (ends.numel() and int(ends[-1]) > rows):
            kind = "non-decreasing cumulative row ends" if cumulative else "non-negative counts"
            raise ValueError(f"{arg} must hold {kind} covering at most {rows} rows, "
                             f"got {g.tolist()}")
    gid = torch.searchsorted(ends, torch.arange(rows, device=g.device), right=True)
    return gid, gid < g.numel()
