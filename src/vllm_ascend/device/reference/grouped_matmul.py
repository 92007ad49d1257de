"""The MoE form of ``npu_grouped_matmul`` as one C++ op (``vllm_ascend::grouped_matmul``).

``matmul.npu_grouped_matmul`` asks :func:`moe_fast` first; it returns the op's outputs when
the arguments are a combination the C++ op covers and ``None`` otherwise, and the reference
then runs its per-expert Python loop (the oracle; it also raises every error for bad input).

Covered (``x=[X (M, K)]``, ``weight=[W (E, K, N)]`` one stacked tensor, ``group_type=0``,
``group_list`` a tensor or list of cumulative ends (``group_list_type=0``) or counts (1),
any ``split_item``, ``act_type`` 0/1/2/5):

=============================  ===============================================================
float                          X and W both fp32 or both bf16; bias ``[(E, N)]`` float or
                               None; output_dtype None/fp32/bf16/fp16. AVX-512: csrc's
                               register-tiled kernel on W as stored (groups of <= 48 rows),
                               at::mm for larger groups; AVX2-only CPUs: at::mm per group in
                               C++. fp32 sums in another order (tolerance below).
int8, raw                      X, W int8, no scale: int32 accumulators (+ int32 bias
                               ``[(E, N)]``), output_dtype None/int32. Bit-identical.
int8, scaled                   scale ``[(E, N)]`` fp32/bf16, per_token_scale ``[(M,)]`` or
                               None, bias ``[(E, N)]`` int32/float or None; output_dtype
                               fp32/bf16/fp16. Bit-identical (the same fp32 epilogue).
=============================  ===============================================================

int8 needs vLLM's oneDNN int8 GEMM exact on this CPU (``cpu_kernels.onednn_available()``:
VNNI / AMX). The accumulators of groups of up to :data:`KERNEL_MAX_ROWS` rows come from
csrc/grouped_int8.cpp on AVX-512 VNNI CPUs (``isa`` 2; the weight repacked once for
``vpdpbusd``, read as 8 interleaved K segments), those of larger groups (and every
group elsewhere, ``isa`` 0) from ``vllm_ascend::onednn_int8_mm`` per expert, called from
C++; both exact, so the epilogue is the same.

Not covered, so on the reference path: a list of per-expert weights, offset, antiquant
(W8A16/W4A16) and packed int4 (A8W4: its own kernel inside the loop) weights, int64 scales,
int8 (requantised) output, fp16 X, mixed X/W dtypes, K = 0, inputs off the CPU and
non-contiguous / oddly shaped parameters; under ``torch.compile`` also split_item 0/1
(per-group outputs have data-dependent shapes).

Tolerance of the float path against the reference (``tests/ut/device/test_grouped_matmul.py``):
``|fast - ref| <= 1e-5 * (|x| @ |W| + |b|)`` elementwise for fp32 (an fp32 summation-order
bound, ~ K * 2**-24 relative to the magnitude), and for bf16 outputs one bf16 rounding step
(``2**-8`` relative to that magnitude) on top: both round the same fp32 value to bf16.

Kernel choice, measured (shared 2-core AMD EPYC Zen 4 box, other jobs running: indicative;
one thread; ms per grouped matmul; MoE shape E=64, K=2048, N=2816 (gate/up of 64 experts,
hidden 2048, intermediate 1408, top-6): 1 token = 6 rows in 6 groups, 16 tokens = 96 rows
in ~60 groups, 256 tokens = 1536 rows, <= 38 per group):

================================  =========  ==========  ===========
path                               1 token    16 tokens   256 tokens
================================  =========  ==========  ===========
reference loop (fp32)                   9.2         124          426
Python loop of torch.mm (fp32)          8.5         143          391
at::mm per group in C++ (fp32)          8.3         122          344
csrc AVX-512 kernel (fp32)              7.8          78          336
csrc AVX-512 kernel (bf16)              4.5          40          299
at::mm per group in C++ (bf16)          --           --          494
vLLM cpu_fused_moe, whole MoE           9.9          90          366
  (fp32, both GEMMs, for scale)
int8 reference (float64)                176        1442         2690
int8 torch._int_mm per group            6.3          51           --
int8 oneDNN per group                   3.6          31          101
================================  =========  ==========  ===========

csrc's VNNI kernel against oneDNN per expert at this W8A8 gate/up shape (``python -m bench
ops -k int8_experts``, 1 and 16 tokens; 2026-12-08): one thread (``OMP_NUM_THREADS=1``, each
EP rank of a multi-process run on this box) 1.42 vs 2.57 ms and 16.3 vs 26.0 ms; two
threads 1.25 vs 1.11 ms and 15.9 vs 15.5 ms (both then at the memory's pace). For a dense
linear (``-k dense_lm_head``, 576 x 49152, two threads) oneDNN is 2x faster (0.50 vs 1.06 ms
for 1 row, 1.03 vs 2.23 ms for 8), so the dense W8A8 linears keep oneDNN.

Small per-expert fp32 GEMMs through torch's GEMM stream the weight at ~11-17 GB/s; the
kernel reads it as stored, 8 weight rows at a time across up to 4096 columns, in 6 x 64
register tiles, and reaches ~18-23 GB/s (vLLM's fused CPU MoE: ~23 GB/s). Its first versions,
which walked 64-column stripes down all K rows (TLB-bound), were 2x slower than at::mm:
the loop order matters more than the ISA. For groups above :data:`KERNEL_MAX_ROWS` rows
(prefill) the kernel and at::mm were within noise for fp32 (336 vs 344 ms); at::mm takes
them. int8: oneDNN per expert (from C++) beats torch._int_mm by 1.6-1.8x and the reference
by 50x.
"""

from __future__ import annotations

import torch

from vllm_ascend.device.reference import cpu_kernels

#: Highest path of the float kernel: 2 AVX-512 (when the CPU has it), 0 at::mm per group in
#: C++ (the AVX2 path). Tests force 0.
isa: int = 2

#: Groups of up to this many rows take the AVX-512 kernel, larger ones at::mm (measured).
KERNEL_MAX_ROWS: int = 48

_ACTS = (0, 1, 2, 5)
_FLOAT = (torch.float32, torch.bfloat16)
_FLOAT_OUT = (torch.float32, torch.bfloat16, torch.float16)


def _one(v):
    """The single tensor of a ``[T]`` (or bare tensor) argument, None for None, else False."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return v
    v = list(v)
    return v[0] if len(v) == 1 and isinstance(v[0], torch.Tensor) else False


def _param_ok(p, e: int, n: int, dtypes) -> bool:
    return p is None or (p is not False and p.is_cpu and p.dtype in dtypes and p.dim() == 2
                         and tuple(p.shape) == (e, n))


#: Read once at import (a plain constant for dynamo, which refuses to trace the probe).
_AVX512: bool = bool(torch.cpu._is_avx512_supported())


def _isa() -> int:
    return isa if isa < 2 or _AVX512 else 0


def moe_fast(xm: torch.Tensor, weight: list, *, bias, scale, offset, antiquant_scale,
             antiquant_offset, per_token_scale, group_list, split_item: int,
             group_list_type: int, act_type: int, dtype: torch.dtype):
    """``npu_grouped_matmul``'s MoE form through ``vllm_ascend::grouped_matmul`` -> its list of
    outputs, or None when the combination is not covered (see the module docstring).

    xm (M, K); weight ``[W (E, K, N)]``; bias/scale ``[(E, N)]``; per_token_scale ``[(M,)]``;
    group_list (G <= E,) ends or counts; dtype: the output dtype the reference resolved.
    Arguments the reference validates before its MoE branch (split_item, act_type, dtypes)
    are already valid here; group_list is validated by the C++ op with the reference's
    messages (ValueError).
    """
    if cpu_kernels.force_exact or offset is not None or antiquant_scale is not None \
            or antiquant_offset is not None or act_type not in _ACTS or len(weight) != 1:
        return None
    w = weight[0]
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or xm.dim() != 2 or not xm.is_cpu \
            or not w.is_cpu or w.shape[1] != xm.shape[1] or xm.shape[1] == 0:
        return None
    e, _, n = w.shape
    if e == 0:
        return None
    b, s, pt = _one(bias), _one(scale), _one(per_token_scale)
    if xm.dtype in _FLOAT:
        if w.dtype != xm.dtype or s is not None or pt is not None or dtype not in _FLOAT_OUT \
                or not _param_ok(b, e, n, _FLOAT_OUT):
            return None
    elif xm.dtype == torch.int8:
        if w.dtype != torch.int8 or n == 0 or not cpu_kernels.onednn_available():
            return None
        if s is None:  # raw accumulators
            if dtype != torch.int32 or pt is not None or act_type != 0 \
                    or not _param_ok(b, e, n, (torch.int32,)):
                return None
        elif dtype not in _FLOAT_OUT or not _param_ok(s, e, n, _FLOAT) \
                or not _param_ok(b, e, n, (torch.int32,) + _FLOAT_OUT) \
                or (pt is not None and (pt is False or pt.dtype not in _FLOAT
                                        or pt.dim() != 1 or pt.shape[0] != xm.shape[0])):
            return None
    else:
        return None
    if not cpu_kernels.native_available():
        return None
    compiling = torch.compiler.is_compiling()
    if split_item in (0, 1) and compiling:
        return None  # per-group outputs: data-dependent shapes (the reference path)
    if isinstance(group_list, torch.Tensor):
        if not group_list.is_cpu or group_list.dtype not in (torch.int32, torch.int64):
            return None
        gl = group_list
    elif compiling:
        return None
    else:
        gl = torch.as_tensor(group_list, dtype=torch.int64)
    y = torch.ops.vllm_ascend.grouped_matmul(xm, w, gl, group_list_type, b, s, pt, act_type,
                                             dtype, _isa(), KERNEL_MAX_ROWS)
    if split_item in (2, 3):
        return [y]
    ends = gl.reshape(-1).to(torch.int64)
    ends = (ends.cumsum(0) if group_list_type == 1 else ends).tolist()
    return [y[lo:hi] for lo, hi in zip([0] + ends[:-1], ends)]
