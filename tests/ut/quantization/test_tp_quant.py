"""Row-parallel dynamic quantisation (``methods._tp_quant``): each TP slice quantised with the
whole row's maximum holds exactly the int8 values, and the scale, of ``npu_dynamic_quant``
on the whole row."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend.device import ops
from vllm_ascend.quantization.methods._tp_quant import dynamic_quant_tp, quantize_with_row_max


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 9), k=st.integers(1, 40), tp=st.sampled_from([2, 4]),
       seed=st.integers(0, 2**16), zero_row=st.booleans())
def test_slices_with_the_row_max_equal_the_whole_row(rows, k, tp, seed, zero_row):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k * tp, generator=g) * torch.rand(rows, 1, generator=g) * 50
    if zero_row and rows:
        x[0] = 0
    q_full, s_full = ops.npu_dynamic_quant(x)
    row_max = x.abs().amax(dim=-1) if rows else x.new_zeros(0)
    for r in range(tp):
        piece = x[:, r * k:(r + 1) * k]
        q, s = quantize_with_row_max(piece, row_max)
        assert torch.equal(q, q_full[:, r * k:(r + 1) * k])
        assert torch.equal(s, s_full)


def test_one_rank_is_plain_dynamic_quant():
    x = torch.randn(5, 24)
    q, s = dynamic_quant_tp(x, 1)
    q_ref, s_ref = ops.npu_dynamic_quant(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def test_nan_rows_follow_npu_dynamic_quant():
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")
    q_ref, s_ref = ops.npu_dynamic_quant(x)
    q, s = quantize_with_row_max(x, x.abs().amax(dim=-1))
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
