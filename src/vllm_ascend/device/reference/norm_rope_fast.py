"""CPU fast paths of the reference norms and rotary product: ``npu_rms_norm``,
``npu_add_rms_norm`` and ``npu_rotary_mul`` as one C++ op each (csrc/norm_rope.cpp:
``vllm_ascend::rms_norm``, ``add_rms_norm``, ``rotary_mul``).

An eager decode step runs two norms and a rotation per layer; each is ~8 small torch ops on
the reference path, whose per-op cost exceeds the arithmetic at decode sizes (see an eager
``python -m bench.step_profile --enforce-eager``). Covered: x (x1, x2) fp32 / bf16 / fp16
CPU tensors of one dtype, gamma 1-D ``(H,)`` floating, any leading dims (made contiguous). The kernels keep
the reference's fp32 math with the sum of squares in double (the reference sums fp32
squares in fp32): results agree to fp32 rounding, bit-identical x_sum. The rotary product
is the reference's fp32 operations in its order (no FMA): bit-identical for fp32 and for
inputs rounded to a narrower output dtype. Rotary covers x ``(T, N, D)`` with a unit last
stride (a head slice is fine) and r1 / r2 ``(T, 1, D)`` or ``(1, 1, D)`` of one float dtype
(``tests/ut/device/test_norm_rope_fast.py``, against a float64 oracle). Each function returns
None where it does not apply (the op then runs its plain math, which raises the errors for
bad input), under ``force_exact`` and without ``vllm_ascend._C``; and while ``torch.compile``
or an FX trace runs, so compiled graphs keep the plain ops (Inductor fuses them, and the
norm + quant fusion pass matches them).
"""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from vllm_ascend.device.reference import cpu_kernels

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _traced() -> bool:
    """dynamo, or an FX trace (Inductor's pattern matcher traces the fusion pass's patterns
    with make_fx, outside dynamo: they must see the same plain ops as the model's graph)."""
    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def _fits(x, gamma) -> bool:
    return isinstance(x, torch.Tensor) and isinstance(gamma, torch.Tensor) \
        and x.dtype in _FLOATS and gamma.dim() == 1 and gamma.is_floating_point() \
        and x.dim() >= 1 and x.shape[-1] == gamma.shape[0] and x.is_cpu and gamma.is_cpu \
        and not cpu_kernels.force_exact and not _traced() and cpu_kernels.native_available()


def rms_norm(x, gamma, epsilon: float):
    """``npu_rms_norm(x, gamma, epsilon)`` -> (y, rstd ``(..., 1)`` fp32) or None."""
    if not _fits(x, gamma):
        return None
    return torch.ops.vllm_ascend.rms_norm(x.contiguous(), gamma.contiguous(), float(epsilon))


def add_rms_norm(x1, x2, gamma, epsilon: float):
    """``npu_add_rms_norm(x1, x2, gamma, epsilon)`` -> (y, rstd, x_sum) or None."""
    if not _fits(x1, gamma) or not isinstance(x2, torch.Tensor) or x2.dtype != x1.dtype \
            or x2.shape != x1.shape or not x2.is_cpu:
        return None
    return torch.ops.vllm_ascend.add_rms_norm(x1.contiguous(), x2.contiguous(),
                                              gamma.contiguous(), float(epsilon))


_MODES = {"half": False, "interleave": True}


def rotary_mul(x, r1, r2, rotary_mode):
    """``npu_rotary_mul(x, r1, r2, rotary_mode)`` -> out ``(T, N, D)`` or None."""
    if rotary_mode not in _MODES or not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS \
            or x.dim() != 3 or x.shape[-1] % 2 or x.stride(-1) != 1 or not x.is_cpu \
            or cpu_kernels.force_exact or _traced() or not cpu_kernels.native_available():
        return None
    t, _, d = x.shape
    for r in (r1, r2):
        if not isinstance(r, torch.Tensor) or r.dim() != 3 or r.shape[1] != 1 \
                or r.shape[2] != d or r.shape[0] not in (1, t) or r.stride(-1) != 1 \
                or not r.is_floating_point() or r.dtype != r1.dtype or not r.is_cpu:
            return None
    return torch.ops.vllm_ascend.rotary_mul(x, r1, r2, _MODES[rotary_mode])
