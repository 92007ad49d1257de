"""The int8 / int4 fast paths inside ``torch.compile`` (vLLM compiles the model): one graph for
every token count (the csrc kernels' meta functions keep the row count symbolic), no graph
break (the fast-path probes run at ``ops.bind()``), the same numbers as eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from vllm_ascend.device import ops
from vllm_ascend.device.reference import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.native_available(),
                                reason="vllm_ascend._C not built")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("k,n", [(64, 48), (1100, 32)])  # 1100: the chunked-K oneDNN path
def test_w8a8_dynamic_compiles_once_and_matches_eager(k, n):
    ops.bind()
    g = torch.Generator().manual_seed(k)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g).t()  # (K, N) view
    w_scale = torch.rand(n, generator=g) * 0.01 + 1e-3

    def f(x):
        xq, xs = ops.npu_dynamic_quant(x)
        return ops.npu_quant_matmul(xq, w, w_scale, pertoken_scale=xs, bias=None,
                                    output_dtype=x.dtype)

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    for m in (2, 3, 9):
        x = torch.randn(m, k, generator=g) * 3
        assert torch.equal(compiled(x), f(x))
    assert counter.frame_count == 1  # no recompilation per token count


def test_int4_weight_only_compiles_once_and_matches_eager():
    ops.bind()
    k, n, group = 128, 32, 32
    g = torch.Generator().manual_seed(1)
    values = torch.randint(-8, 8, (k, n), dtype=torch.int32, generator=g)
    packed = ops.npu_convert_weight_to_int4pack(values)
    scale = torch.rand(k // group, n, generator=g) * 0.01 + 1e-3

    def f(x):
        return ops.npu_weight_quant_batchmatmul(x, packed, antiquant_scale=scale,
                                                antiquant_group_size=group)

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    for m in (2, 5):
        x = torch.randn(m, k, generator=g)
        assert torch.equal(compiled(x), f(x))
    assert counter.frame_count == 1
