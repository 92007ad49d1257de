"""The MoE gating / routing C++ ops (``device/reference/moe_fast.py``, csrc/moe_routing.cpp)
against the reference's plain PyTorch path (the oracle: every fast path off) and against
independent float64 math: bit-identical outputs, the same errors, one compiled graph."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.device.exact import plain
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import moe
from vllm_ascend.device.reference import moe_fast

pytestmark = pytest.mark.skipif(not ck.native_available(), reason="vllm_ascend._C not built")

SEEDS = st.integers(0, 2**31 - 1)


def same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def ids_of(g, n, k, experts, tied: bool):
    """(n, k) expert ids; ``tied`` draws from few experts so many pairs share one."""
    hi = max(1, experts // 4) if tied else experts
    return torch.randint(0, hi, (n, k), generator=g, dtype=torch.int32)


@given(seed=SEEDS, n=st.integers(0, 40), e=st.integers(1, 70), k=st.integers(1, 9),
       ties=st.booleans())
def test_gating_softmax_is_bit_identical_and_matches_float64(seed, n, e, k, ties):
    k = min(k, e)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, e, generator=g)
    if ties:  # repeated logits: equal probabilities, the lower index first
        x = x.round()
    got = moe.npu_moe_gating_top_k_softmax(x, k=k)
    same(got, plain(moe.npu_moe_gating_top_k_softmax, x, k=k))
    probs = torch.softmax(x.double(), dim=-1)
    if n:
        assert torch.allclose(got[0].double(), probs.gather(1, got[1].long()), atol=1e-6)
        assert bool((got[0][:, :-1] >= got[0][:, 1:]).all())
    assert torch.equal(got[2], (torch.arange(k) * n).view(1, k) + torch.arange(n).view(n, 1)
                       if n else got[2])


def test_gating_softmax_nan_and_inf_rows_match_the_reference():
    x = torch.tensor([[0.5, float("nan"), 2.0, 1.0], [float("-inf"), 1.0, float("-inf"), 1.0]])
    same(moe.npu_moe_gating_top_k_softmax(x, k=4), plain(moe.npu_moe_gating_top_k_softmax, x, k=4))


@settings(max_examples=150)
@given(seed=SEEDS, n=st.integers(0, 30), h=st.integers(1, 40), k=st.integers(1, 8),
       experts=st.integers(1, 24), ranks=st.integers(1, 4), rank=st.integers(0, 3),
       active=st.integers(-1, 60), count_type=st.sampled_from([0, 1]),
       flag=st.booleans(), quant=st.sampled_from([-1, 1]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), id_dtype=st.sampled_from(
           [torch.int32, torch.int64]), tied=st.booleans())
def test_init_routing_is_bit_identical(seed, n, h, k, experts, ranks, rank, active, count_type,
                                       flag, quant, dtype, id_dtype, tied):
    experts *= ranks
    local = experts // ranks
    rng = [] if ranks == 1 else [min(rank, ranks - 1) * local, (min(rank, ranks - 1) + 1) * local]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g).to(dtype)
    ids = ids_of(g, n, k, experts, tied).to(id_dtype)
    kw = dict(expert_num=experts, active_num=active, expert_tokens_num_type=count_type,
              expert_tokens_num_flag=flag, quant_mode=quant, active_expert_range=rng)
    if quant == 1 and min(active, n * k) == 0 and active >= 0:
        return  # no rows to quantise: the plain path
    assert moe_fast.init_routing_v2(x, ids, scale=None, offset=None, drop_pad_mode=0,
                                    row_idx_type=0, x_dtype=None, **kw) is not None or \
        (quant == 1 and n * k == 0)
    same(moe.npu_moe_init_routing_v2(x, ids, **kw), plain(moe.npu_moe_init_routing_v2, x, ids, **kw))


def test_init_routing_rejects_bad_ids_with_the_reference_message():
    x, ids = torch.randn(3, 4), torch.tensor([[0, 5], [1, 2], [3, 8]])
    for fn in (moe.npu_moe_init_routing_v2, lambda *a, **k: plain(moe.npu_moe_init_routing_v2,
                                                                   *a, **k)):
        with pytest.raises(ValueError, match=r"expert_idx values must be in \[0, expert_num=8\)"):
            fn(x, ids, expert_num=8)


@settings(max_examples=150)
@given(seed=SEEDS, n=st.integers(0, 30), h=st.integers(1, 40), k=st.integers(1, 8),
       rows=st.integers(0, 80), mode=st.sampled_from([0, 1, 2, 3]), weighted=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_finalize_routing_is_bit_identical_and_matches_float64(seed, n, h, k, rows, mode,
                                                              weighted, dtype):
    g = torch.Generator().manual_seed(seed)
    expert_rows = torch.randn(rows, h, generator=g).to(dtype)
    # some pairs dropped (-1) or pointing past the rows: they add 0
    src_to_dst = torch.randint(-1, rows + 2, (n * k,), generator=g, dtype=torch.int32)
    scales = torch.rand(n, k, generator=g) if weighted else None
    args = (expert_rows, None, None, None, scales, src_to_dst, None)
    got = moe.npu_moe_finalize_routing(*args, drop_pad_mode=mode, k=k)
    ref = plain(moe.npu_moe_finalize_routing, *args, drop_pad_mode=mode, k=k)
    idx = src_to_dst.long().view(k, n).t() if mode in (0, 1) else src_to_dst.long().view(n, k)
    w = torch.ones(n, k, dtype=torch.float64) if scales is None else scales.double()
    want = torch.zeros(n, h, dtype=torch.float64)
    size = torch.zeros(n, h, dtype=torch.float64)  # sum of |terms|: the rounding scale
    for i in range(n):
        for j in range(k):
            if 0 <= idx[i, j] < rows:
                want[i] += w[i, j] * expert_rows[idx[i, j]].double()
                size[i] += (w[i, j] * expert_rows[idx[i, j]].double()).abs()
    # fp32 sums in another order than torch's sum (k <= 8 terms); bf16: one output rounding
    tol = 8 * 2.0**-24 if dtype == torch.float32 else 2.0**-8 + 8 * 2.0**-24
    for out in (got, ref):
        assert got.dtype == dtype and out.shape == (n, h)
        assert bool(((out.double() - want).abs() <= tol * size + 1e-30).all())


def test_compiled_routing_is_one_graph_for_any_token_count():
    """fullgraph, dynamic: the three C++ ops trace with symbolic N (no graph break)."""

    def layer(x, logits):
        w, ids, _ = moe.npu_moe_gating_top_k_softmax(logits, k=2)
        rows, row_idx, counts, _ = moe.npu_moe_init_routing_v2(
            x, ids, expert_num=4, expert_tokens_num_type=1, expert_tokens_num_flag=True)
        y = moe.npu_moe_finalize_routing(rows * 2, None, None, None, w, row_idx, ids,
                                         drop_pad_mode=2)
        return y, counts

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for n in (1, 5, 17):
        x, logits = torch.randn(n, 8), torch.randn(n, 4)
        same(compiled(x, logits), layer(x, logits))
