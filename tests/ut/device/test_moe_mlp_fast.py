"""The float grouped SwiGLU MLP fusion (``device/reference/moe_mlp_fast.py``,
csrc/moe_mlp.cpp: vLLM's ``cpu_fused_moe`` over prepacked weights) against float64 math
and the facade's three ops (``npu_grouped_matmul`` -> ``npu_swiglu`` -> ``npu_grouped_matmul``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.device.exact import exact_only
from vllm_ascend.device import fusion
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import moe_mlp_fast
from vllm_ascend.ops.fused_moe import experts

pytestmark = pytest.mark.skipif(not moe_mlp_fast.available(),
                                reason="vllm_ascend._C or vLLM's CPU MoE kernel not loaded")

SEEDS = st.integers(0, 2**31 - 1)


def composite(x, group_list, w13, w2):
    saved, moe_mlp_fast.enabled = moe_mlp_fast.enabled, False
    try:
        return experts.grouped_mlp(x, group_list, w13, w2)
    finally:
        moe_mlp_fast.enabled = saved


def mlp64(x, group_list, w13, w2):
    """Per row of expert e: (silu(x W_gate) * (x W_up)) W_down in float64, and the magnitude
    |silu(g) * u| @ |W_down| that bounds the fp32 rounding of the down projection."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    mag = torch.zeros(x.shape, dtype=torch.float64)
    start, inter = 0, w2.shape[1]
    for e, n in enumerate(group_list.tolist()):
        xs = x[start:start + n].double()
        gu = xs @ w13[e].double()
        act = F.silu(gu[:, :inter]) * gu[:, inter:]
        out[start:start + n] = act @ w2[e].double()
        mag[start:start + n] = act.abs() @ w2[e].double().abs() \
            + (xs.abs() @ w13[e].double().abs()).amax(-1, keepdim=True)
        start += n
    return out, mag


def counts(draw_sizes, local):
    return torch.tensor(draw_sizes[:local] + [0] * (local - len(draw_sizes[:local])))


@settings(max_examples=60)
@given(seed=SEEDS, local=st.integers(1, 6), hidden=st.sampled_from([32, 64, 96]),
       inter=st.sampled_from([32, 64]), sizes=st.lists(st.integers(0, 7), max_size=6),
       pad=st.integers(0, 3), one_group=st.booleans(),
       gl_dtype=st.sampled_from([torch.int32, torch.int64]))
def test_fusion_matches_float64_and_the_composite(seed, local, hidden, inter, sizes, pad,
                                                  one_group, gl_dtype):
    g = torch.Generator().manual_seed(seed)
    gl = counts(sizes, local)
    if one_group:  # every row in one (the last) group
        gl = torch.zeros(local, dtype=torch.int64)
        gl[-1] = sum(sizes) or 1
    rows = int(gl.sum()) + pad  # rows past the group sum: 0 in the output
    x = torch.randn(rows, hidden, generator=g)
    w13 = torch.randn(local, hidden, 2 * inter, generator=g) * hidden ** -0.5
    w2 = torch.randn(local, inter, hidden, generator=g) * inter ** -0.5
    got = moe_mlp_fast.grouped_swiglu_mlp(x, gl.to(gl_dtype), w13, w2)
    assert got is not None and got.shape == x.shape and got.dtype == x.dtype
    want, mag = mlp64(x, gl, w13, w2)
    assert bool(((got.double() - want).abs() <= 2e-5 * mag + 1e-30).all())
    assert not bool(got[int(gl.sum()):].any())
    tol = 4e-5 * float(mag.max()) if mag.numel() else 0.0
    torch.testing.assert_close(got, composite(x, gl, w13, w2), rtol=0, atol=tol + 1e-30)


def test_bf16_agrees_with_the_composite_to_bf16_steps():
    g = torch.Generator().manual_seed(0)
    gl = torch.tensor([3, 0, 5, 1])
    x = torch.randn(9, 64, generator=g).bfloat16()
    w13 = (torch.randn(4, 64, 64, generator=g) * 0.125).bfloat16()
    w2 = (torch.randn(4, 32, 64, generator=g) * 0.18).bfloat16()
    got = moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2)
    want, mag = mlp64(x, gl, w13, w2)
    assert got.dtype == torch.bfloat16
    # both round gate/up and the activation to bf16: a few bf16 steps of the magnitude
    assert bool(((got.double() - want).abs() <= 2.0**-5 * mag).all())
    torch.testing.assert_close(got.float(), composite(x, gl, w13, w2).float(),
                               rtol=0, atol=float(2.0**-5 * mag.max()))


def test_declines_unaligned_volatile_and_exact_and_the_layer_falls_back():
    x = torch.randn(4, 48)
    w13, w2 = torch.randn(2, 48, 64), torch.randn(2, 32, 48)
    gl = torch.tensor([1, 3])
    assert moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2) is None  # H = 48: not 32-aligned
    x, w13, w2 = torch.randn(4, 64), torch.randn(2, 64, 64), torch.randn(2, 32, 64)
    ck.mark_volatile(w13)
    try:
        assert moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2) is None
    finally:
        ck._volatile.clear()
        ck._any_volatile = False
    with exact_only():
        assert moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2) is None
    assert moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2.double()) is None


def test_bad_group_list_is_an_error_naming_it():
    x, w13, w2 = torch.randn(4, 64), torch.randn(2, 64, 64), torch.randn(2, 32, 64)
    with pytest.raises(RuntimeError, match="sums to 5 > 4 rows"):
        moe_mlp_fast.grouped_swiglu_mlp(x, torch.tensor([2, 3]), w13, w2)
    with pytest.raises(RuntimeError, match=r"group_list\[0\] = -1"):
        moe_mlp_fast.grouped_swiglu_mlp(x, torch.tensor([-1, 3]), w13, w2)


def test_prepack_is_cached_and_rebuilt_after_an_in_place_write():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 64, generator=g)
    w13, w2 = torch.randn(3, 64, 64, generator=g), torch.randn(3, 32, 64, generator=g)
    gl = torch.tensor([2, 2, 1])
    before = moe_mlp_fast.builds()
    first = moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2)
    assert moe_mlp_fast.builds() == before + 2
    moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2)
    assert moe_mlp_fast.builds() == before + 2  # hits
    with torch.no_grad():
        w2[1].mul_(2.0)  # an EPLB move writes a slot in place like this
    again = moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2)
    assert moe_mlp_fast.builds() == before + 3  # w2 rebuilt
    torch.testing.assert_close(again[2:4], first[2:4] * 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again[[0, 1, 4]], first[[0, 1, 4]], rtol=0, atol=0)


def test_the_facade_offers_the_fusion_and_names_unknown_ones():
    assert fusion("grouped_swiglu_mlp") is moe_mlp_fast.grouped_swiglu_mlp
    with pytest.raises(KeyError, match="known: grouped_swiglu_mlp"):
        fusion("grouped_mystery")


def graphs_of(fn):
    """``fn`` compiled with dynamic shapes and fullgraph, and the op names of each graph."""
    import torch._dynamo

    graphs = []

    def backend(gm, _inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes])
        return gm

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, dynamic=True, fullgraph=True), graphs


def test_compiled_call_has_one_op_with_symbolic_rows():
    w13, w2 = torch.randn(2, 64, 64), torch.randn(2, 32, 64)
    fn, graphs = graphs_of(
        lambda x, gl: torch.ops.vllm_ascend.grouped_swiglu_mlp(x, gl, w13, w2, "vec"))
    for rows in (3, 7, 12):
        gl = torch.tensor([rows // 2, rows - rows // 2])
        x = torch.randn(rows, 64)
        torch.testing.assert_close(fn(x, gl), moe_mlp_fast.grouped_swiglu_mlp(x, gl, w13, w2))
    assert len(graphs) == 1 and any("grouped_swiglu_mlp" in t for t in graphs[0])


# --- swiglu_moe: dispatch + grouped MLP + combine of a rank holding every expert ------------
def moe64(x, topk_weights, topk_ids, w13, w2):
    """sum_j w[:, j] * mlp_{id[:, j]}(x) in float64, and the bound of its fp32 rounding."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    mag = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for w, e in zip(topk_weights[t].tolist(), topk_ids[t].tolist()):
            y, m = mlp64(x[t:t + 1], torch.tensor([1]), w13[e:e + 1], w2[e:e + 1])
            out[t] += w * y[0]
            mag[t] += abs(w) * m[0]
    return out, mag


@settings(max_examples=50)
@given(seed=SEEDS, local=st.integers(1, 8), hidden=st.sampled_from([32, 64]),
       inter=st.sampled_from([32, 64]), tokens=st.integers(0, 9), k=st.integers(1, 4),
       one_expert=st.booleans())
def test_swiglu_moe_matches_float64_and_the_layer_composite(seed, local, hidden, inter, tokens,
                                                            k, one_expert):
    from vllm_ascend.ops.fused_moe.comm.registry import get_comm_method
    from vllm_ascend.ops.fused_moe.layer import moe_forward

    k = min(k, local)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    w13 = torch.randn(local, hidden, 2 * inter, generator=g) * hidden ** -0.5
    w2 = torch.randn(local, inter, hidden, generator=g) * inter ** -0.5
    logits = torch.randn(tokens, local, generator=g)
    if one_expert:  # every token's first choice is expert 0
        logits[:, 0] += 100.0
    ids = logits.topk(k, dim=-1).indices.to(torch.int32)
    weights = torch.rand(tokens, k, generator=g)
    got = moe_mlp_fast.swiglu_moe(x, weights, ids, w13, w2)
    assert got is not None and got.shape == x.shape and got.dtype == x.dtype
    want, mag = moe64(x, weights, ids, w13, w2)
    assert bool(((got.double() - want).abs() <= 2e-5 * mag + 1e-30).all())

    comm = get_comm_method("allgather")(None, local)  # one rank: moe_forward takes the fusion
    fused = moe_forward(x, logits, w13, w2, top_k=k, comm=comm, renormalize=True)
    saved, moe_mlp_fast.enabled = moe_mlp_fast.enabled, False
    try:
        plain = moe_forward(x, logits, w13, w2, top_k=k, comm=comm, renormalize=True)
    finally:
        moe_mlp_fast.enabled = saved
    tol = 4e-5 * float(mag.max()) * k if mag.numel() else 0.0
    torch.testing.assert_close(fused, plain, rtol=0, atol=tol + 1e-30)


def test_moe_forward_takes_the_fusion_only_with_every_expert_local(monkeypatch):
    from vllm_ascend.ops.fused_moe import layer
    from vllm_ascend.ops.fused_moe.comm.registry import get_comm_method

    calls = []
    real = layer.local_swiglu_moe
    monkeypatch.setattr(layer, "local_swiglu_moe",
                        lambda *a: calls.append(1) or real(*a))
    x, logits = torch.randn(3, 64), torch.randn(3, 4)
    w13, w2 = torch.randn(4, 64, 64), torch.randn(4, 32, 64)
    comm = get_comm_method("allgather")(None, 4)
    layer.moe_forward(x, logits, w13, w2, top_k=2, comm=comm)
    assert calls == [1]

    class Eplb:  # EPLB must see the dispatch's group_list: no fusion
        def to_physical(self, ids):
            return ids

        def record(self, group_list):
            self.seen = group_list

    eplb = Eplb()
    layer.moe_forward(x, logits, w13, w2, top_k=2, comm=comm, eplb=eplb)
    assert calls == [1] and int(eplb.seen.sum()) == 6


def test_swiglu_moe_rejects_ids_outside_the_experts_and_declines_other_dtypes():
    x, w13, w2 = torch.randn(2, 64), torch.randn(3, 64, 64), torch.randn(3, 32, 64)
    weights = torch.ones(2, 2)
    with pytest.raises(RuntimeError, match=r"topk_ids holds 3, outside the 3 experts"):
        moe_mlp_fast.swiglu_moe(x, weights, torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
                                w13, w2)
    ids = torch.tensor([[0, 1], [2, 0]], dtype=torch.int32)
    assert moe_mlp_fast.swiglu_moe(x, weights, ids.long(), w13, w2) is None
    assert moe_mlp_fast.swiglu_moe(x, weights.double(), ids, w13, w2) is None
    assert moe_mlp_fast.swiglu_moe(torch.randn(2, 48), weights, ids, torch.randn(3, 48, 64),
                                   torch.randn(3, 32, 48)) is None


def test_compiled_swiglu_moe_has_one_op_with_symbolic_tokens():
    w13, w2 = torch.randn(4, 64, 64), torch.randn(4, 32, 64)
    fn, graphs = graphs_of(
        lambda x, w, i: torch.ops.vllm_ascend.swiglu_moe(x, w, i, w13, w2, "vec"))
    for tokens in (3, 7, 12):
        x, w = torch.randn(tokens, 64), torch.rand(tokens, 2)
        ids = torch.randint(0, 4, (tokens, 2), dtype=torch.int32)
        torch.testing.assert_close(fn(x, w, ids), moe_mlp_fast.swiglu_moe(x, w, ids, w13, w2))
    assert len(graphs) == 1 and any("swiglu_moe" in t for t in graphs[0])
