"""``npu_fused_infer_attention_score`` (reference) and the Ascend attention backend on CPU.

Oracle: per sequence and per query head, ``softmax(q k^T * scale + mask) v`` in float64
over the sequence's contiguous K/V (before paging), with the bottom-right causal mask
(query i of q_len sees keys j <= kv_len - q_len + i). The op reads the same K/V through
shuffled physical pages; unused cache rows hold NaN so any stray read shows up.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference import attention as ref

MASK = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)


def oracle(qs, ks, vs, scale, causal):
    """qs[b] (s, N, D), ks/vs[b] (L, H_kv, D) -> out (sum s, N, D), lse (sum s, N) float64."""
    outs, lses = [], []
    for q, k, v in zip(qs, ks, vs):
        s, n, _ = q.shape
        kv_len, h_kv = k.shape[0], k.shape[1]
        out = torch.zeros(s, n, v.shape[-1], dtype=torch.float64)
        lse = torch.zeros(s, n, dtype=torch.float64)
        for h in range(n):
            kh, vh = k[:, h // (n // h_kv)].double(), v[:, h // (n // h_kv)].double()
            scores = q[:, h].double() @ kh.T * scale
            if causal:
                for i in range(s):  # query i sees keys 0 .. kv_len - s + i
                    scores[i, kv_len - s + i + 1:] = -math.inf
            out[:, h] = torch.softmax(scores, dim=-1) @ vh
            lse[:, h] = torch.logsumexp(scores, dim=-1)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def page(ks, block_size, gen):
    """Scatter per-sequence rows (L_b, H, D) into shuffled pages (nb, bs, H, D), NaN elsewhere.

    Returns (cache, block_table (B, max_blocks) int32, -1 past each sequence's pages).
    """
    counts = [-(-k.shape[0] // block_size) for k in ks]
    total = sum(counts) + 2
    perm = torch.randperm(total, generator=gen)
    cache = torch.full((total, block_size, *ks[0].shape[1:]), math.nan, dtype=ks[0].dtype)
    table = torch.full((len(ks), max(max(counts), 1) + 1), -1, dtype=torch.int32)
    used = 0
    for b, (k, c) in enumerate(zip(ks, counts)):
        for i in range(c):
            phys = int(perm[used])
            rows = k[i * block_size:(i + 1) * block_size]
            cache[phys, : rows.shape[0]] = rows
            table[b, i] = phys
            used += 1
    return cache, table


def cumulative(lens):
    out, acc = [], 0
    for n in lens:
        acc += n
        out.append(acc)
    return out


@st.composite
def cases(draw):
    n_seq = draw(st.integers(1, 4))
    q_lens = [draw(st.integers(1, 7)) for _ in range(n_seq)]
    ctx = [0 if draw(st.booleans()) else draw(st.integers(0, 12)) for _ in range(n_seq)]
    kv_heads = draw(st.sampled_from([1, 2]))
    return SimpleNamespace(
        q_lens=q_lens, kv_lens=[q + c for q, c in zip(q_lens, ctx)],
        block_size=draw(st.sampled_from([4, 16])), kv_heads=kv_heads,
        heads=kv_heads * draw(st.sampled_from([1, 2, 3])),
        head_size=draw(st.sampled_from([8, 16])), seed=draw(st.integers(0, 2**16)),
        flat_pages=draw(st.booleans()), causal=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
    )


def make_inputs(c):
    gen = torch.Generator().manual_seed(c.seed + 1)
    d = c.head_size
    qs = [torch.randn(s, c.heads, d, generator=gen, dtype=c.dtype) for s in c.q_lens]
    ks = [torch.randn(n, c.kv_heads, d, generator=gen, dtype=c.dtype) for n in c.kv_lens]
    vs = [torch.randn(n, c.kv_heads, d, generator=gen, dtype=c.dtype) for n in c.kv_lens]
    return gen, qs, ks, vs


@given(cases())
def test_paged_matches_float64_oracle(c):
    _, qs, ks, vs = make_inputs(c)
    # Equal seeds give K and V the same page shuffle.
    k_cache, table = page(ks, c.block_size, torch.Generator().manual_seed(c.seed))
    v_cache, table_v = page(vs, c.block_size, torch.Generator().manual_seed(c.seed))
    assert torch.equal(table, table_v)
    if c.flat_pages:
        k_cache, v_cache = k_cache.flatten(2), v_cache.flatten(2)
    scale = 1.0 / math.sqrt(c.head_size)
    out, lse = ref.npu_fused_infer_attention_score(
        torch.cat(qs), k_cache, v_cache, atten_mask=MASK if c.causal else None,
        block_table=table, actual_seq_lengths=cumulative(c.q_lens),
        actual_seq_lengths_kv=c.kv_lens, num_heads=c.heads, num_key_value_heads=c.kv_heads,
        scale=scale, input_layout="TND", block_size=c.block_size,
        sparse_mode=3 if c.causal else 0, softmax_lse_flag=True)
    want, want_lse = oracle(qs, ks, vs, scale, c.causal)
    tol = 1e-10 if c.dtype == torch.float64 else 2e-5
    assert out.dtype == c.dtype and out.shape == want.shape
    assert torch.allclose(out.double(), want, atol=tol, rtol=tol)
    assert lse.shape == (*want.shape[:2], 1) and lse.dtype == torch.float32
    assert torch.allclose(lse[..., 0].double(), want_lse, atol=1e-4, rtol=1e-5)


@given(cases())
def test_contiguous_tnd_matches_oracle(c):
    _, qs, ks, vs = make_inputs(c)
    scale = 0.3
    out, lse = ref.npu_fused_infer_attention_score(
        torch.cat(qs), torch.cat(ks), torch.cat(vs), atten_mask=MASK if c.causal else None,
        actual_seq_lengths=torch.tensor(cumulative(c.q_lens)),
        actual_seq_lengths_kv=cumulative(c.kv_lens), num_heads=c.heads,
        num_key_value_heads=c.kv_heads, scale=scale, input_layout="TND",
        sparse_mode=3 if c.causal else 0)
    want, _ = oracle(qs, ks, vs, scale, c.causal)
    assert torch.allclose(out.double(), want, atol=2e-5, rtol=2e-5)
    assert lse.numel() == 0


def test_decode_sees_whole_context_and_prefill_is_causal():
    """Hand-checkable: one key per position, value = position; scores all equal."""
    kv = torch.arange(5, dtype=torch.float64).reshape(5, 1, 1)
    q = torch.zeros(3, 1, 1, dtype=torch.float64)  # last 3 positions of a 5-token sequence
    out, _ = ref.npu_fused_infer_attention_score(
        q, torch.zeros(5, 1, 1, dtype=torch.float64), kv, atten_mask=MASK,
        actual_seq_lengths=[3], actual_seq_lengths_kv=[5], input_layout="TND", sparse_mode=3)
    # query i sees positions 0..2+i uniformly: mean = (2+i)/2
    assert out.flatten().tolist() == [1.0, 1.5, 2.0]


def test_rows_past_last_query_end_are_zero():
    q = torch.ones(4, 1, 2)
    kv = torch.ones(2, 1, 2)
    out, _ = ref.npu_fused_infer_attention_score(
        q, kv, kv, actual_seq_lengths=[2], actual_seq_lengths_kv=[2], input_layout="TND")
    assert torch.equal(out[2:], torch.zeros(2, 1, 2)) and torch.equal(out[:2], torch.ones(2, 1, 2))


def _call(**overrides):
    kwargs = dict(atten_mask=MASK, block_table=torch.zeros(1, 1, dtype=torch.int32),
                  actual_seq_lengths=[1], actual_seq_lengths_kv=[1], input_layout="TND",
                  block_size=4, sparse_mode=3)
    kwargs.update(overrides)
    cache = torch.zeros(1, 4, 1, 2)
    return ref.npu_fused_infer_attention_score(torch.zeros(1, 1, 2), cache, cache, **kwargs)


@pytest.mark.parametrize("overrides,match", [
    ({"input_layout": "BSH"}, "input_layout"),
    ({"sparse_mode": 2}, "sparse_mode"),
    ({"atten_mask": None}, "atten_mask"),
    ({"atten_mask": torch.ones(4, 4, dtype=torch.bool)}, "atten_mask"),
    ({"sparse_mode": 0}, "atten_mask"),
    ({"sparse_mode": 0, "atten_mask": None, "pre_tokens": 8}, "pre_tokens"),
    ({"dequant_scale1": torch.ones(1)}, "dequant_scale1"),
    ({"antiquant_mode": 1}, "antiquant_mode"),
    ({"inner_precise": 7}, "inner_precise"),
    ({"block_size": 8}, "block_size"),
    ({"block_table": torch.full((1, 1), 5, dtype=torch.int32)}, "block_table"),
    ({"actual_seq_lengths_kv": [9]}, "blocks"),
    ({"actual_seq_lengths": [1, 1]}, "actual_seq_lengths_kv has 1"),
    ({"actual_seq_lengths": None}, "actual_seq_lengths is required"),
    ({"actual_seq_lengths": [2], "actual_seq_lengths_kv": [2]}, "query has 1 tokens"),
    ({"num_heads": 2}, "num_heads=2"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_rejects_unsupported_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)


def test_causal_needs_at_least_as_many_keys_as_queries():
    q = torch.zeros(2, 1, 2)
    kv = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="actual_seq_lengths_kv must be >= query length"):
        ref.npu_fused_infer_attention_score(q, kv, kv, atten_mask=MASK, actual_seq_lengths=[2],
                                            actual_seq_lengths_kv=[1], input_layout="TND",
                                            sparse_mode=3)


def test_facade_resolves_the_reference_op():
    from vllm_ascend.device import ops

    assert ops.npu_fused_infer_attention_score is ref.npu_fused_infer_attention_score


# ------------------------------------------------------------------ Ascend attention backend


def vllm_layout_cache(num_blocks, block_size, kv_heads, head_size, dtype):
    """vLLM 0.32's per-layer view for layout LBNHC: memory [B, N, H, 2D], logical [B, H, N, 2D]."""
    phys = torch.full((num_blocks, block_size, kv_heads, 2 * head_size), math.nan, dtype=dtype)
    return phys.permute(0, 2, 1, 3)


def common_metadata(q_lens, kv_lens, block_table, block_size):
    from vllm.v1.attention.backend import CommonAttentionMetadata

    qsl = torch.tensor([0, *cumulative(q_lens)], dtype=torch.int32)
    slots = []
    for b, (q, kv) in enumerate(zip(q_lens, kv_lens)):
        for pos in range(kv - q, kv):
            slots.append(int(block_table[b, pos // block_size]) * block_size + pos % block_size)
    return CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl.clone(),
        seq_lens=torch.tensor(kv_lens, dtype=torch.int32), num_reqs=len(q_lens),
        num_actual_tokens=sum(q_lens), max_query_len=max(q_lens), max_seq_len=max(kv_lens),
        block_table_tensor=block_table, slot_mapping=torch.tensor(slots, dtype=torch.int64))


@pytest.mark.parametrize("ascend_layout", [False, True], ids=["vllm-layout", "ascend-layout"])
@pytest.mark.parametrize("block_size", [4, 16])
def test_impl_prefill_then_chunk_matches_oracle(ascend_layout, block_size):
    """Two steps through AscendAttentionImpl: a prefill of the context, then a chunk/decode
    per request attending to it (KV written by do_kv_cache_update, padding slot -1)."""
    from vllm_ascend.attention import npu_attention as na

    heads, kv_heads, d = 4, 2, 8
    ctx, new = [5, 1, 9], [3, 1, 1]
    total = [c + n for c, n in zip(ctx, new)]
    gen = torch.Generator().manual_seed(0)
    q_all = [torch.randn(n, heads, d, generator=gen) for n in total]
    k_all = [torch.randn(n, kv_heads, d, generator=gen) for n in total]
    v_all = [torch.randn(n, kv_heads, d, generator=gen) for n in total]
    num_blocks = 12
    table = torch.tensor([[7, 2, 9], [0, 11, 11], [4, 1, 3]], dtype=torch.int32)
    if ascend_layout:
        shape = na.AscendAttentionBackend.get_kv_cache_shape(num_blocks, block_size, kv_heads, d)
        kv_cache = torch.full(shape, math.nan)
    else:
        kv_cache = vllm_layout_cache(num_blocks, block_size, kv_heads, d, torch.float32)
    impl = na.AscendAttentionImpl(heads, d, 0.5, kv_heads)
    builder = na.AscendAttentionMetadataBuilder(
        SimpleNamespace(block_size=block_size), [], SimpleNamespace(), torch.device("cpu"))

    for step_lens, first in ((ctx, 0), (new, 1)):
        lo = [0 if first == 0 else c for c in ctx]
        hi = [c if first == 0 else t for c, t in zip(ctx, total)]
        md = builder.build(0, common_metadata(step_lens, hi, table, block_size))
        pick = lambda xs: torch.cat([x[a:b] for x, a, b in zip(xs, lo, hi)])  # noqa: E731
        q, k, v = pick(q_all), pick(k_all), pick(v_all)
        # One padding token: slot -1, query row past the last end.
        pad = lambda t: torch.cat([t, torch.full_like(t[:1], 1e9)])  # noqa: E731
        slot_mapping = torch.cat([md.slot_mapping, torch.tensor([-1])])
        impl.do_kv_cache_update(None, pad(k), pad(v), kv_cache, slot_mapping)
        output = torch.full((q.shape[0] + 1, heads, d), -7.0)
        got = impl.forward(None, pad(q), pad(k), pad(v), kv_cache, md, output=output)
        want, _ = oracle([x[a:b] for x, a, b in zip(q_all, lo, hi)],
                         [x[:b] for x, b in zip(k_all, hi)],
                         [x[:b] for x, b in zip(v_all, hi)], 0.5, causal=True)
        assert got is output
        assert torch.allclose(got[:-1].double(), want, atol=2e-5)
        assert torch.equal(got[-1], torch.full((heads, d), -7.0))
    k_cache, v_cache = na.split_kv_cache(kv_cache, kv_heads, d)
    assert torch.equal(k_cache[table[2, 0].item(), 0], k_all[2][0])
    assert torch.equal(v_cache[table[0, 0].item(), 1], v_all[0][1])
    assert torch.isnan(k_cache[[5, 6, 8, 10]]).all()  # pages no request owns stay untouched


def test_backend_contract():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.kv_cache_interface import KVCacheLayout

    from vllm_ascend.attention import npu_attention as na

    backend = na.AscendAttentionBackend
    assert backend.get_name() == "ASCEND"
    assert AttentionBackendEnum["ASCEND"].get_class() is backend
    na.register_attention_backend()  # idempotent
    assert backend.get_impl_cls() is na.AscendAttentionImpl
    assert backend.get_builder_cls() is na.AscendAttentionMetadataBuilder
    assert backend.get_kv_cache_shape(10, 128, 2, 64) == (2, 10, 128, 2, 64)
    assert backend.supports_block_size(128) and not backend.supports_block_size(8)
    assert backend.get_preferred_block_size(16) == 128
    assert backend.supports_head_size(128) and not backend.supports_head_size(72)
    assert backend.supported_kv_cache_layouts() == (KVCacheLayout.LBNHC,)
    assert not backend.forward_includes_kv_cache_update


@pytest.mark.parametrize("kwargs,match", [
    ({"sliding_window": 128}, "sliding_window"),
    ({"alibi_slopes": [1.0]}, "alibi_slopes"),
    ({"logits_soft_cap": 30.0}, "logits_soft_cap"),
    ({"sinks": torch.zeros(4)}, "sinks"),
    ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype"),
    ({"attn_type": "encoder_only"}, "decoder"),
])
def test_impl_rejects_unsupported_features(kwargs, match):
    from vllm_ascend.attention.npu_attention import AscendAttentionImpl

    with pytest.raises(NotImplementedError, match=match):
        AscendAttentionImpl(4, 8, 1.0, 2, **kwargs)


def test_split_kv_cache_rejects_unknown_shape():
    from vllm_ascend.attention.npu_attention import split_kv_cache

    with pytest.raises(ValueError, match="neither"):
        split_kv_cache(torch.zeros(3, 2, 4, 8), num_kv_heads=2, head_size=8)
