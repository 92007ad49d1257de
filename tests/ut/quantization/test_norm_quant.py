"""Eager norm + per-token quant fusion (quantization/norm_quant.py): a marked AscendRMSNorm
hands int8 rows with their scale to the W8A8_DYNAMIC linear after it, which skips its own
quantisation. Checked against float64: the rows are the float64 norm quantised (within half
a step plus fp32 rounding) and the linear's output is the float64 product of those rows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.quantization.layers import MERGED, build, load, make_tensors
from vllm_ascend.ops.layernorm import AscendRMSNorm
from vllm_ascend.quantization import norm_quant

pytestmark = pytest.mark.usefixtures("vllm_ctx")


class LlamaDecoderLayer(torch.nn.Module):
    """The attributes of vLLM's LlamaDecoderLayer that ``norm_quant.enable`` reads (the
    attention half left out: its norm then stays float)."""

    def __init__(self, norm, gate_up):
        super().__init__()
        self.post_attention_layernorm = norm
        self.input_layernorm = AscendRMSNorm(norm.weight.shape[0])
        self.mlp = torch.nn.Module()
        self.mlp.gate_up_proj = gate_up


def _setup(k, widths, seed):
    gen = torch.Generator().manual_seed(seed)
    linear = build(MERGED, "W8A8_DYNAMIC", k, widths)
    tensors, w_deq = make_tensors(MERGED, "W8A8_DYNAMIC", k, widths, gen)
    load(linear, MERGED, tensors)
    linear.quant_method.process_weights_after_loading(linear)
    norm = AscendRMSNorm(k, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(k, generator=gen) + 0.5)
    return linear, w_deq, norm, gen


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 12), k=st.sampled_from([16, 48, 64]), seed=st.integers(0, 2**16))
def test_fused_norm_feeds_the_linear(m, k, seed):
    linear, w_deq, norm, gen = _setup(k, [24, 8], seed)
    assert norm_quant.enable(LlamaDecoderLayer(norm, linear)) == 1
    assert norm.fuse_dynamic_quant
    x, residual = torch.randn(m, k, generator=gen), torch.randn(m, k, generator=gen)
    xq, x_sum = norm(x, residual)
    assert xq.dtype == torch.int8 and torch.equal(x_sum, x + residual)
    scale = norm_quant.token_scale(xq)
    x64 = (x + residual).double()
    n64 = x64 * torch.rsqrt(x64.square().mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    s64 = n64.abs().amax(-1) / 127
    torch.testing.assert_close(scale.double(), s64, rtol=2e-6, atol=0)
    assert float((xq.double() - n64 / s64[:, None]).abs().max()) <= 0.5 + 2e-3
    y = linear(xq)
    assert y.dtype == torch.float32 and y.shape == (m, 32)
    a64 = xq.double() * scale.double()[:, None]
    want = a64 @ w_deq.t()
    tol = 1e-5 * (a64.abs() @ w_deq.abs().t()) + 1e-7
    assert bool(((y.double() - want).abs() <= tol).all())


def test_unmarked_norm_and_first_layer_stay_float():
    linear, _, norm, gen = _setup(16, [8, 8], 0)
    x = torch.randn(3, 16, generator=gen)
    assert norm(x).dtype == torch.float32  # no residual: the plain norm, marked or not
    y, _ = norm(x, x)
    assert y.dtype == torch.float32 and norm_quant.token_scale(y) is None
    assert norm_quant.enable(torch.nn.Sequential(norm, linear)) == 0  # unknown structure
