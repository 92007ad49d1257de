"""int4 weight formats: ModelSlim's checkpoint layouts and the form the Ascend kernels take.

Three layouts of the same signed int4 values ``w`` (two's complement, in [-8, 7]):

- **legacy** (ModelSlim, description ``version`` absent or ``"0"``): one value per int8
  element, checkpoint layout ``(out, in)``.
- **pairs** (ModelSlim ``version: "1.0.0"``): two values per int8 byte along the *output*
  dim, checkpoint shape ``(out / 2, in)``; byte ``r`` holds output ``2r`` in its low nibble
  and ``2r + 1`` in its high nibble.
- **kernel** (torch_npu ``npu_convert_weight_to_int4pack``): eight values per int32 along
  the last dim of the ``(in, out)`` operator layout, element ``8j + t`` in bits
  ``4t .. 4t + 3``.

On a little-endian machine the pairs layout, transposed to ``(in, out / 2)``, *is* the kernel
layout read as int32 (four bytes = eight nibbles, low nibble first); the schemes
nevertheless go through the values (:func:`unpack_int4_pairs` then :func:`kernel_int4`) so
both checkpoint formats reach the identical kernel form by one code path.

Scales handed to the A8W4 grouped matmul are int64 words carrying an fp32 pattern in the
low 32 bits (:func:`encode_scale`), rounded to the 10-bit mantissa the device keeps.
"""

from __future__ import annotations

import torch

from vllm_ascend.device import ops


def _signed_nibble(n: torch.Tensor) -> torch.Tensor:
    return torch.where(n >= 8, n - 16, n)


def pack_int4_pairs(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """int4 values (any integer dtype, in [-8, 7]) -> int8 with two values per byte along
    ``dim`` (size ``2n -> n``): even index in the low nibble, odd index in the high one."""
    v = values.movedim(dim, -1).to(torch.int16)
    if v.shape[-1] % 2:
        raise ValueError(f"int4 pairs need an even size along dim {dim}, got {tuple(values.shape)}")
    byte = (v[..., 0::2] & 0xF) | ((v[..., 1::2] & 0xF) << 4)
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8).movedim(-1, dim)


def unpack_int4_pairs(packed: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack_int4_pairs`: int8 ``(.., n, ..)`` -> int8 values ``(.., 2n, ..)``."""
    b = packed.movedim(dim, -1).to(torch.int16) & 0xFF
    lo, hi = _signed_nibble(b & 0xF), _signed_nibble(b >> 4)
    values = torch.stack((lo, hi), dim=-1).flatten(-2)
    return values.to(torch.int8).movedim(-1, dim)


def kernel_int4(values: torch.Tensor) -> torch.Tensor:
    """int4 values ``(..., k, n)`` (int8) -> the kernel's packed int32 ``(..., k, n / 8)``."""
    lead, n = values.shape[:-1], values.shape[-1]
    flat = values.reshape(-1, n).to(torch.int32).contiguous()
    return ops.npu_convert_weight_to_int4pack(flat).reshape(*lead, n // 8)


def encode_scale(scale: torch.Tensor) -> torch.Tensor:
    """fp32 scales -> int64 words with the fp32 pattern, mantissa rounded to 10 bits (half to
    even), in bits 0-31 and nothing above: the grouped matmul's A8W4 scale operand."""
    flat = scale.float().contiguous().reshape(-1)
    words = ops.npu_trans_quant_param(flat, round_mode=1) & 0xFFFFFFFF
    return words.reshape(scale.shape)


def decode_scale(words: torch.Tensor) -> torch.Tensor:
    """The fp32 value an :func:`encode_scale` word carries."""
    low = words & 0xFFFFFFFF
    return torch.where(low >= 2**31, low - 2**32, low).to(torch.int32).view(torch.float32)


def msd_bias(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``8 * sum_k w[k, n] * scale[g(k), n]`` -> fp32 ``(..., n)``: the float bias the A8W4
    grouped matmul needs (it multiplies ``x - 8``; see ``device/reference/matmul._a8w4``).

    values int4 ``(..., k, n)``; scale ``(..., G, n)`` with ``G`` dividing ``k``.
    """
    *lead, k, n = values.shape
    groups = scale.shape[-2]
    per_group = values.double().reshape(*lead, groups, k // groups, n).sum(dim=-2)
    return (8 * (per_group * scale.double()).sum(dim=-2)).float()
