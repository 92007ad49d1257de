"""The float grouped expert MLP as one call into vLLM's CPU MoE kernel (a backend fusion).

``y = (silu(x @ W_gate) * (x @ W_up)) @ W_down`` per local expert is, through the facade,
``npu_grouped_matmul`` (gate/up) -> ``npu_swiglu`` -> ``npu_grouped_matmul`` (down): three
ops, as on an NPU. On a CPU that costs two passes over the expert weights in the grouped
matmul's ``(E, K, N)`` layout and an intermediate round trip; vanilla vLLM CPU runs the
whole MLP in one pass over prepacked weights (``cpu_fused_moe``). :func:`grouped_swiglu_mlp`
gives the plugin that same kernel, through the dispatcher (``torch.ops._C``): rows already
grouped by expert go in as ``topk_ids (R, 1)`` = each row's expert with weight 1 (exact: a
product with 1.0), so the kernel's own routing is a no-op pass.

Whole-layer numbers against vanilla vLLM: ``python -m bench moe --parts layer``
(docs/benchmarks.md).

:func:`swiglu_moe` goes one step further for a rank that holds every expert (EP 1, no EPLB:
``layer.moe_forward``): it hands the kernel the selected top-k ids and weights, so the
kernel's own routing replaces dispatch (``npu_moe_init_routing_v2``) and combine
(``npu_moe_finalize_routing``) as well; the whole float MoE layer then costs about what
vanilla vLLM's does (``bench moe``, docs/benchmarks.md: 0.75-0.93x vanilla's latency at the
tiny shapes, 0.98-1.04x at the realistic one).

One C++ op, ``vllm_ascend::grouped_swiglu_mlp`` (csrc/moe_mlp.cpp), builds the row -> expert
ids and calls the kernel, so the Python cost is one call (a meta kernel keeps the row count
symbolic under ``torch.compile``). Covered: x, w13, w2 all fp32 or all bf16, contiguous CPU
tensors, ``H`` and ``I`` multiples of 32 (the kernel's block), group_list int32/int64 counts
(``group_list_type=1``) summing to at most the row count (rows past the sum are 0, as in
the composite). Everything else, a volatile weight (``cpu_kernels.mark_volatile``: a
prepack per use would cost more than the GEMMs), ``force_exact``, a build without
``vllm_ascend._C`` and a vLLM build without the kernel: ``None``, and the caller runs the
three facade ops.

The prepacked weights (vLLM's layout ``(E, 2I, H)`` / ``(E, H, I)``, then
``prepack_moe_weight``) are derived once per weight tensor and kept in csrc's tensor cache
like the other fast paths' packs (rebuilt when the tensor's version counter moves, e.g.
after an EPLB expert move; dropped with the tensor). The cache is a second copy of the float
expert weights: the price of keeping the plugin's ``(E, K, N)`` weights, which the facade
ops, the quantised schemes' shared code and EPLB's transfers read as stored. ``VLLM_ASCEND_REFERENCE_EXACT=1``
turns it off with every other fast path.

Tolerance against the composite (``tests/ut/device/test_moe_mlp_fast.py``): fp32 summation
order (``2e-5`` of the magnitude ``|silu(g) * u| @ |W_down|``); bf16 both round the
gate/up products and the activation to bf16, so they agree to a few bf16 steps.
"""

from __future__ import annotations

import torch

from vllm_ascend.device.reference import cpu_kernels

#: vLLM's CPU MoE kernel ISA tag: "vec" is its portable vectorised path (AVX2 / AVX-512 /
#: other), the one vanilla vLLM CPU uses for unquantised experts on CPUs without AMX.
ISA = "vec"
#: The kernel's block size along H and I.
ALIGN = 32
#: False turns this fusion off (tests run the composite through the same callers).
enabled: bool = True

_available: bool | None = None


@torch.compiler.disable
def _probe() -> bool:
    try:
        import vllm._custom_ops  # noqa: F401  (loads vLLM's CPU kernels into torch.ops._C)

        c = torch.ops._C  # native_available() covers csrc's grouped_swiglu_mlp / swiglu_moe
        return cpu_kernels.native_available() and hasattr(c, "cpu_fused_moe") \
            and hasattr(c, "prepack_moe_weight")
    except Exception:  # no vLLM, or a build without its CPU kernels
        return False


def available() -> bool:
    """csrc's ``grouped_swiglu_mlp`` / ``swiglu_moe`` and vLLM's ``cpu_fused_moe`` /
    ``prepack_moe_weight`` are loaded in this process."""
    global _available
    if _available is None:
        _available = _probe()
    return _available


def builds() -> int:
    """Prepacked weights built so far (tests: hits and rebuilds after in-place writes)."""
    return int(torch.ops.vllm_ascend.moe_mlp_cache(False)) if available() else 0


def clear_cache() -> None:
    if available():
        torch.ops.vllm_ascend.moe_mlp_cache(True)


_DTYPES = (torch.float32, torch.bfloat16)
_COUNTS = (torch.int32, torch.int64)


def _fits(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> bool:
    """x ``(rows, H)``, w13 ``(L, H, 2I)``, w2 ``(L, I, H)``: the kernel's dtypes, alignment
    and layout, and weights that stay put."""
    if x.dtype not in _DTYPES or w13.dtype != x.dtype or w2.dtype != x.dtype or x.dim() != 2 \
            or w13.dim() != 3 or w2.dim() != 3:
        return False
    local, hidden, two_i = w13.shape
    if hidden == 0 or two_i % (2 * ALIGN) or hidden % ALIGN or two_i == 0 \
            or tuple(w2.shape) != (local, two_i // 2, hidden) or x.shape[1] != hidden:
        return False
    return x.is_cpu and w13.is_cpu and w2.is_cpu and x.is_contiguous() \
        and w13.is_contiguous() and w2.is_contiguous() \
        and not cpu_kernels.is_volatile(w13) and not cpu_kernels.is_volatile(w2)


def grouped_swiglu_mlp(x: torch.Tensor, group_list: torch.Tensor, w13: torch.Tensor,
                       w2: torch.Tensor) -> torch.Tensor | None:
    """``experts.grouped_mlp``'s math in one kernel call, or None (see the module docstring).

    x ``(rows, H)`` grouped by expert; group_list ``(L,)`` rows per expert; w13
    ``(L, H, 2I)`` gate | up; w2 ``(L, I, H)`` -> ``(rows, H)`` in x's dtype. Negative
    counts or a sum above ``rows`` are a RuntimeError from the C++ op.
    """
    if not enabled or cpu_kernels.force_exact or group_list.dtype not in _COUNTS \
            or group_list.dim() != 1 or not group_list.is_cpu or not _fits(x, w13, w2) \
            or group_list.shape[0] != w13.shape[0] or not available():
        return None
    return torch.ops.vllm_ascend.grouped_swiglu_mlp(x, group_list, w13, w2, ISA)


def swiglu_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
               w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor | None:
    """Dispatch, grouped MLP and combine of a rank holding every expert in one kernel call
    (the kernel's own routing), or None (same conditions as :func:`grouped_swiglu_mlp`).

    x ``(M, H)``; topk_weights ``(M, K)`` fp32; topk_ids ``(M, K)`` int32 in ``[0, L)``;
    w13 ``(L, H, 2I)``; w2 ``(L, I, H)`` -> ``(M, H)`` in x's dtype:
    ``sum_j topk_weights[:, j] * mlp_{topk_ids[:, j]}(x)``. An id outside ``[0, L)`` is a
    RuntimeError from the C++ op.
    """
    if not enabled or cpu_kernels.force_exact or topk_weights.dtype != torch.float32 \
            or topk_ids.dtype != torch.int32 or not topk_ids.is_cpu \
            or not topk_weights.is_cpu or topk_ids.dim() != 2 or topk_ids.shape[1] == 0 \
            or not _fits(x, w13, w2) or not available():
        return None
    return torch.ops.vllm_ascend.swiglu_moe(x, topk_weights, topk_ids, w13, w2, ISA)
