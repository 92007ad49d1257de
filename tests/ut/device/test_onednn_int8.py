"""``vllm_ascend::onednn_int8_mm`` (csrc/onednn_int8.cpp): vLLM's oneDNN int8 GEMM behind a
C++ weight cache, the int8 x int8 fast path of ``npu_quant_matmul``.

Asserted against exact integer math (float64 of int8 products, exact at these sizes): the
accumulators are bit-identical, fp32 up to K = 1023 and float64 beyond (chunked K); the
cache builds a weight once, rebuilds after an in-place write, never serves a dead tensor's
handle to a new tensor at the same address; under ``torch.compile`` the op is called directly
(one graph, any M) and gives the eager result.
"""

from __future__ import annotations

import gc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend.device.reference import cpu_kernels

pytestmark = pytest.mark.skipif(
    not (cpu_kernels.native_available() and cpu_kernels.onednn_available()
         and hasattr(torch.ops.vllm_ascend, "onednn_int8_mm")),
    reason="needs vllm_ascend._C with onednn_int8_mm and vLLM's exact oneDNN int8 GEMM (VNNI)")


def exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.double() @ b.double()


def int8(shape, gen) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)


def built() -> int:
    return torch.ops.vllm_ascend.onednn_int8_cache(False)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 64), k=st.sampled_from([1, 7, 64, 576, 1023, 1024, 1536, 2100]),
       n=st.integers(1, 96), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_exact_accumulators(m, k, n, transposed, seed):
    gen = torch.Generator().manual_seed(seed)
    b = int8((n, k), gen).t() if transposed else int8((k, n), gen)
    a = int8((m, k), gen)
    y = torch.ops.vllm_ascend.onednn_int8_mm(a, b)
    assert y.dtype == (torch.float32 if k <= 1023 else torch.float64)
    assert y.shape == (m, n)
    assert torch.equal(y.double(), exact(a, b))
    if m:  # the reference op's fast path returns the same accumulators (None for no rows)
        assert torch.equal(cpu_kernels.int8_mm(a, b), y)


def test_extremes_are_exact():
    a = torch.full((2, 1023), -128, dtype=torch.int8)
    b = torch.full((1023, 16), -128, dtype=torch.int8)  # 1023 * 2**14 < 2**24
    assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, b).double(), exact(a, b))
    a, b = torch.full((1, 2046), 127, dtype=torch.int8), torch.full((2046, 8), -128,
                                                                    dtype=torch.int8)
    assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, b), exact(a, b))


def test_cache_builds_once_and_follows_writes_and_lifetimes():
    gen = torch.Generator().manual_seed(0)
    a = int8((3, 64), gen)
    b = int8((48, 64), gen).t()
    start = built()
    first = torch.ops.vllm_ascend.onednn_int8_mm(a, b)
    assert built() == start + 1
    for _ in range(3):
        assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, b), first)
    assert built() == start + 1
    b.add_(1)  # in place: version counter moves -> rebuilt
    assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, b).double(), exact(a, b))
    assert built() == start + 2
    with torch.inference_mode():  # vLLM's forward: inference tensors carry no version
        w = int8((32, 64), gen).t()
        assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, w).double(), exact(a, w))
    # a new tensor (possibly at a dead one's address) never reuses the old handle
    for _ in range(5):
        del b
        gc.collect()
        b = int8((48, 64), gen).t()
        assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, b).double(), exact(a, b))
    torch.ops.vllm_ascend.onednn_int8_cache(True)  # release everything; still correct after
    assert torch.equal(torch.ops.vllm_ascend.onednn_int8_mm(a, b).double(), exact(a, b))


def test_bad_input_is_a_clear_error():
    with pytest.raises(RuntimeError, match="must be int8"):
        torch.ops.vllm_ascend.onednn_int8_mm(torch.zeros(1, 4), torch.zeros(4, 2,
                                                                           dtype=torch.int8))
    with pytest.raises(RuntimeError, match=r"a \(m, k\) and b \(k, n\)"):
        torch.ops.vllm_ascend.onednn_int8_mm(torch.zeros(1, 4, dtype=torch.int8),
                                             torch.zeros(5, 2, dtype=torch.int8))


def test_compiled_graph_calls_the_op_directly():
    gen = torch.Generator().manual_seed(1)
    b = int8((40, 576), gen).t()
    scale = torch.rand(40, generator=gen)

    def f(a):
        return cpu_kernels.int8_mm(a, b) * scale

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for m in (1, 5, 17):
        a = int8((m, 576), gen)
        assert torch.equal(compiled(a), f(a))
        assert torch.equal(f(a).double(), exact(a, b) * scale.double().float().double()) or \
            torch.allclose(f(a).double(), exact(a, b) * scale.double(), rtol=1e-6)
