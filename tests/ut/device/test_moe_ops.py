"""MoE gating/routing reference ops against independent float64 oracles (torch_npu_ops.md)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from vllm_ascend.device.reference import moe

# --------------------------------------------------------------------------- strategies


@st.composite
def distinct_rows(draw, n, e, step=0.3):
    """(n, e) float32 whose rows are permutations of distinct values (no top-k ties)."""
    rows = [draw(st.permutations(range(e))) for _ in range(n)]
    shift = draw(st.floats(-2, 2))
    return torch.tensor(rows, dtype=torch.float64).reshape(n, e).mul(step).add(shift).float()


@st.composite
def routing_case(draw, max_n=6, max_k=4, max_e=6):
    """x (N, H) float32 and expert_idx (N, K) int32; N may be 0, experts may be empty."""
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(1, max_k))
    e = draw(st.integers(1, max_e))
    h = draw(st.integers(1, 5))
    one = draw(st.booleans())  # all pairs to a single expert
    if one:
        ids = [draw(st.integers(0, e - 1))] * (n * k)
    else:
        ids = draw(st.lists(st.integers(0, e - 1), min_size=n * k, max_size=n * k))
    x = torch.randn(n, h, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    return x, torch.tensor(ids, dtype=torch.int32).reshape(n, k), e


def close(actual: torch.Tensor, expected, rtol=1e-5, atol=1e-7) -> bool:
    """actual (any float dtype) matches the float64 oracle values."""
    want = torch.as_tensor(expected, dtype=torch.float64).reshape(actual.shape)
    return torch.allclose(actual.double(), want, rtol=rtol, atol=atol)


def sorted_pairs(flat: list[int], keep=lambda e: True) -> list[int]:
    """Oracle stable sort: flat pair indices ordered by (expert, position)."""
    return [f for f in sorted(range(len(flat)), key=lambda f: (flat[f], f)) if keep(flat[f])]


# --------------------------------------------------------------------------------- gating


@given(st.data())
def test_gating_top_k_softmax(data):
    n, e = data.draw(st.integers(0, 5)), data.draw(st.integers(1, 9))
    k = data.draw(st.integers(1, e))
    x = data.draw(distinct_rows(n, e))
    y, idx, row_idx = moe.npu_moe_gating_top_k_softmax(x, k=k)
    assert y.dtype == torch.float32 and idx.dtype == torch.int32 and row_idx.dtype == torch.int32
    assert y.shape == idx.shape == row_idx.shape == (n, k)
    for i in range(n):
        row = [float(v) for v in x[i].double()]
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        order = sorted(range(e), key=lambda c: -p[c])[:k]
        assert idx[i].tolist() == order
        assert close(y[i], [p[c] for c in order])
        assert row_idx[i].tolist() == [j * n + i for j in range(k)]


def test_gating_top_k_softmax_finished_rows_and_ties():
    x = torch.zeros(3, 4)  # all ties: the lower expert index wins
    finished = torch.tensor([False, True, False])
    y, idx, _ = moe.npu_moe_gating_top_k_softmax(x, finished, k=2)
    assert idx.tolist() == [[0, 1], [4, 4], [0, 1]]  # finished rows route to expert E
    assert torch.allclose(y, torch.full((3, 2), 0.25))


def gating_oracle(x, k, bias, k_group, groups, mode, norm_type, scale, eps=1e-20):
    """float64 loops; returns (idx rows, y rows, s rows, selection margin)."""
    out_idx, out_y, out_s, margin = [], [], [], math.inf
    n, e = x.shape
    gsize = e // groups
    for i in range(n):
        row = [float(v) for v in x[i].double()]
        if norm_type == 1:
            s = [1 / (1 + math.exp(-v)) for v in row]
        else:
            z = sum(math.exp(v) for v in row)
            s = [math.exp(v) / z for v in row]
        sb = [s[c] + (float(bias[c]) if bias is not None else 0.0) for c in range(e)]
        allowed = set(range(e))
        if groups > 1:
            scores = []
            for g in range(groups):
                members = sorted(sb[g * gsize:(g + 1) * gsize], reverse=True)
                scores.append(members[0] if mode == 0 else members[0] + members[1])
            ranked = sorted(range(groups), key=lambda g: -scores[g])
            if k_group < groups:
                margin = min(margin, scores[ranked[k_group - 1]] - scores[ranked[k_group]])
            allowed = {c for g in ranked[:k_group] for c in range(g * gsize, (g + 1) * gsize)}
        ranked_e = sorted(allowed, key=lambda c: -sb[c])
        for a, b in zip(ranked_e, ranked_e[1:]):
            margin = min(margin, sb[a] - sb[b])
        chosen = ranked_e[:k]
        y = [s[c] for c in chosen]
        if norm_type == 1:
            total = sum(y) + eps
            y = [v / total for v in y]
        out_idx.append(chosen)
        out_y.append([v * scale for v in y])
        out_s.append(s)
    return out_idx, out_y, out_s, margin


@st.composite
def gating_case(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    mode = draw(st.sampled_from([0, 1]))
    gsize = draw(st.integers(2 if (groups > 1 and mode == 1) else 1, 4))
    e = groups * gsize
    k_group = draw(st.integers(1, groups))
    k = draw(st.integers(1, k_group * gsize if groups > 1 else e))
    n = draw(st.integers(0, 4))
    x = draw(distinct_rows(n, e, step=0.45))
    bias = None
    if draw(st.booleans()):
        bias = torch.tensor(draw(st.permutations(range(e))), dtype=torch.float32) * 0.07 - 0.1
    return dict(
        x=x, k=k, bias=bias, k_group=k_group, groups=groups, mode=mode,
        norm_type=draw(st.sampled_from([0, 1])), scale=draw(st.sampled_from([1.0, 2.5])),
    )


@given(gating_case())
def test_gating_top_k(case):
    idx_ref, y_ref, s_ref, margin = gating_oracle(
        case["x"], case["k"], case["bias"], case["k_group"], case["groups"], case["mode"],
        case["norm_type"], case["scale"],
    )
    assume(margin > 1e-5)  # fp32 vs fp64 must agree on the selection
    y, idx, norm_out = moe.npu_moe_gating_top_k(
        case["x"], case["k"], bias=case["bias"], k_group=case["k_group"],
        group_count=case["groups"], group_select_mode=case["mode"], norm_type=case["norm_type"],
        routed_scaling_factor=case["scale"],
    )
    assert idx.dtype == torch.int32 and y.dtype == case["x"].dtype
    assert idx.tolist() == idx_ref
    assert close(y, y_ref)
    assert close(norm_out, s_ref)


def test_gating_top_k_softmax_is_not_renormalised():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y, idx, _ = moe.npu_moe_gating_top_k(x, 2, norm_type=0)
    p = torch.softmax(x.double(), -1)[0]
    assert idx.tolist() == [[3, 2]]
    assert torch.allclose(y.double(), p[[3, 2]].unsqueeze(0))  # sum < 1: no renorm for softmax


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gating_top_k_deepseek_v3(seed):
    """sigmoid, bias, 8 groups, top-4 groups (sum of top 2), top-8, renorm, scale 2.5; E=256."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 256, generator=g)
    bias = torch.randn(256, generator=g) * 0.1
    idx_ref, y_ref, _, margin = gating_oracle(x, 8, bias, 4, 8, 1, 1, 2.5)
    assert margin > 1e-6
    y, idx, _ = moe.npu_moe_gating_top_k(
        x, 8, bias=bias, k_group=4, group_count=8, group_select_mode=1, renorm=0, norm_type=1,
        routed_scaling_factor=2.5, eps=1e-20,
    )
    assert idx.tolist() == idx_ref
    assert torch.allclose(y.double(), torch.tensor(y_ref, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(y.sum(-1), torch.full((12,), 2.5), rtol=1e-5)


# -------------------------------------------------------------------------------- routing


@given(routing_case(), st.data())
def test_init_routing_v2(case, data):
    x, expert_idx, e = case
    n, k = expert_idx.shape
    start = data.draw(st.integers(0, e - 1))
    end = data.draw(st.integers(start + 1, e))
    use_range = data.draw(st.booleans())
    if not use_range:
        start, end = 0, e
    tokens_type = data.draw(st.sampled_from([0, 1, 2]))
    ex, row_idx, tokens, _ = moe.npu_moe_init_routing_v2(
        x, expert_idx, active_num=n * k, expert_num=e, expert_tokens_num_type=tokens_type,
        expert_tokens_num_flag=True, active_expert_range=[start, end] if use_range else [],
    )
    flat = expert_idx.reshape(-1).tolist()
    kept = sorted_pairs(flat, lambda ex_id: start <= ex_id < end)
    assert ex.shape == (n * k, x.shape[1]) and row_idx.dtype == torch.int32
    want_row = [-1] * (n * k)
    for p, f in enumerate(kept):
        want_row[f] = p
        assert torch.equal(ex[p], x[f // k])
    assert torch.count_nonzero(ex[len(kept):]) == 0
    assert row_idx.tolist() == want_row
    counts = [sum(1 for v in flat if v == c) for c in range(start, end)]
    assert tokens.dtype == torch.int64
    if tokens_type == 1:
        assert tokens.tolist() == counts
    elif tokens_type == 0:
        assert tokens.tolist() == [sum(counts[: c + 1]) for c in range(len(counts))]
    else:
        pairs = [[start + c, cnt] for c, cnt in enumerate(counts) if cnt]
        assert tokens.tolist() == pairs + [[0, 0]] * (len(counts) - len(pairs))


def test_init_routing_v2_active_num_truncates_and_scale_passthrough():
    x = torch.arange(8.0).reshape(4, 2)
    expert_idx = torch.tensor([[1], [0], [1], [0]], dtype=torch.int32)
    scale = torch.tensor([10.0, 11.0, 12.0, 13.0])
    ex, row_idx, tokens, ex_scale = moe.npu_moe_init_routing_v2(
        x, expert_idx, scale=scale, active_num=3, expert_num=2
    )
    # order: tokens 1, 3 (expert 0), 0, 2 (expert 1); only 3 rows are produced
    assert torch.equal(ex, x[[1, 3, 0]])
    assert row_idx.tolist() == [2, 0, -1, 1]
    assert ex_scale.tolist() == [11.0, 13.0, 10.0]
    assert tokens.numel() == 0  # expert_tokens_num_flag=False


@given(routing_case(), st.data())
def test_init_routing_v2_dynamic_quant(case, data):
    x, expert_idx, e = case
    n, k = expert_idx.shape
    x[: data.draw(st.integers(0, n))] *= data.draw(st.sampled_from([0.0, 1.0]))  # zero rows
    smooth = torch.rand(e, x.shape[1]) + 0.5 if data.draw(st.booleans()) else None
    ex, row_idx, _, ex_scale = moe.npu_moe_init_routing_v2(
        x, expert_idx, scale=smooth, expert_num=e, quant_mode=1
    )
    assert ex.dtype == torch.int8 and ex_scale.dtype == torch.float32
    flat = expert_idx.reshape(-1).tolist()
    for p, f in enumerate(sorted_pairs(flat)):
        v = x[f // k].double()
        if smooth is not None:
            v = v * smooth[flat[f]].double()
        amax = float(v.abs().max())
        want_scale = amax / 127 if amax > 0 else 1.0
        assert math.isclose(float(ex_scale[p]), want_scale, rel_tol=1e-6)
        assert (ex[p].double() - torch.round(v / want_scale)).abs().max() <= 1
        assert torch.allclose(ex[p].double() * want_scale, v, atol=want_scale * 0.5 + 1e-6)


@given(st.data())
def test_init_routing_v2_grouped_compute_finalize_round_trip(data):
    """init_routing_v2 -> per-expert matmul -> finalize_routing(drop_pad_mode=2) == direct sum."""
    n, e = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 6))
    k = data.draw(st.integers(1, e))
    h, h2 = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    ids = [data.draw(st.permutations(range(e)))[:k] for _ in range(n)]
    expert_idx = torch.tensor(ids, dtype=torch.int32).reshape(n, k)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    x, w = torch.randn(n, h, generator=g), torch.randn(e, h, h2, generator=g)
    probs = torch.rand(n, k, generator=g)
    start = data.draw(st.integers(0, e - 1))
    end = data.draw(st.integers(start + 1, e))
    ex, row_idx, counts, _ = moe.npu_moe_init_routing_v2(
        x, expert_idx, active_num=n * k, expert_num=e, expert_tokens_num_type=1,
        expert_tokens_num_flag=True, active_expert_range=[start, end],
    )
    out_rows = torch.zeros(ex.shape[0], h2)
    offset = 0
    for local, cnt in enumerate(counts.tolist()):  # the grouped matmul, expert by expert
        out_rows[offset:offset + cnt] = ex[offset:offset + cnt] @ w[start + local]
        offset += cnt
    out = moe.npu_moe_finalize_routing(
        out_rows, None, None, None, probs, row_idx, expert_idx, drop_pad_mode=2
    )
    want = torch.zeros(n, h2, dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            if start <= ids[i][j] < end:  # experts outside the range contribute 0
                want[i] += probs[i, j].double() * (x[i].double() @ w[ids[i][j]].double())
    assert out.shape == (n, h2)
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)


@given(routing_case())
def test_init_routing_v1_and_finalize_v1_layout(case):
    x, expert_idx, e = case
    n, k = expert_idx.shape
    row_idx = torch.arange(n * k, dtype=torch.int32).reshape(k, n).t()  # row_idx[i, j] = j*N + i
    active = n  # all rows
    ex, ex_row, ex_expert = moe.npu_moe_init_routing(x, row_idx, expert_idx, active)
    flat = expert_idx.reshape(-1).tolist()
    order = sorted_pairs(flat)
    sorted_row = [int(row_idx.reshape(-1)[f]) for f in order]
    assert ex_expert.tolist() == [flat[f] for f in order]
    assert ex.shape == (n * k, x.shape[1])
    want_row = [0] * (n * k)
    for p, r in enumerate(sorted_row):
        want_row[r] = p
        assert torch.equal(ex[p], x[r % n])
    assert ex_row.tolist() == want_row
    # finalize in the v1 (column-major) layout with an identity expert recovers x * sum(scales)
    scales = torch.rand(n, k)
    out = moe.npu_moe_finalize_routing(ex, None, None, None, scales, ex_row, expert_idx)
    assert close(out, x.double() * scales.double().sum(1, keepdim=True), atol=1e-6)
    # compute_expert_tokens on the sorted ids
    cum = moe.npu_moe_compute_expert_tokens(ex_expert, e)
    assert cum.dtype == torch.int32
    assert cum.tolist() == [sum(1 for v in flat if v <= c) for c in range(e)]


def test_init_routing_v1_active_num_limits_rows():
    x = torch.arange(6.0).reshape(3, 2)
    expert_idx = torch.tensor([[1, 2], [0, 1], [0, 2]], dtype=torch.int32)
    row_idx = torch.tensor([[0, 3], [1, 4], [2, 5]], dtype=torch.int32)
    ex, ex_row, ex_expert = moe.npu_moe_init_routing(x, row_idx, expert_idx, 1)
    assert ex_expert.tolist() == [0, 0, 1, 1, 2, 2]
    assert ex.shape == (2, 2)  # min(N, active_num) * K rows
    assert ex_row.tolist() == [2, 0, 1, 4, 3, 5]


@st.composite
def finalize_case(draw):
    n, k, e, h = (draw(st.integers(0, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 4)),
                  draw(st.integers(1, 4)))
    r = draw(st.integers(0, n * k + 2))
    dst = draw(st.lists(st.integers(-1, r - 1), min_size=n * k, max_size=n * k))
    g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    opt = lambda t: t if draw(st.booleans()) else None  # noqa: E731
    return dict(
        rows=torch.randn(r, h, generator=g), skip1=opt(torch.randn(n, h, generator=g)),
        skip2=opt(torch.randn(n, h, generator=g)), bias=opt(torch.randn(e, h, generator=g)),
        scales=opt(torch.rand(n, k, generator=g)),
        dst=torch.tensor(dst, dtype=torch.int32),
        experts=torch.randint(0, e, (n, k), generator=g, dtype=torch.int32),
        mode=draw(st.sampled_from([0, 1, 2, 3])), n=n, k=k,
    )


@given(finalize_case())
def test_finalize_routing(c):
    n, k, h = c["n"], c["k"], c["rows"].shape[1]
    out = moe.npu_moe_finalize_routing(
        c["rows"], c["skip1"], c["skip2"], c["bias"], c["scales"], c["dst"], c["experts"],
        drop_pad_mode=c["mode"], k=k,
    )
    want = torch.zeros(n, h, dtype=torch.float64)
    for i in range(n):
        for name in ("skip1", "skip2"):
            if c[name] is not None:
                want[i] += c[name][i].double()
        for j in range(k):
            d = int(c["dst"][j * n + i] if c["mode"] in (0, 1) else c["dst"][i * k + j])
            if d < 0:
                continue
            term = c["rows"][d].double()
            if c["bias"] is not None:
                term = term + c["bias"][int(c["experts"][i, j])].double()
            want[i] += (1.0 if c["scales"] is None else float(c["scales"][i, j])) * term
    assert out.shape == (n, h) and out.dtype == c["rows"].dtype
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)


def test_finalize_routing_pad_layout_accepts_3d_rows():
    rows = torch.arange(12.0).reshape(2, 3, 2)  # (E, C, H)
    out = moe.npu_moe_finalize_routing(
        rows, None, None, None, None, torch.tensor([4, -1, 0, 5]), None, drop_pad_mode=3, k=2
    )
    assert out.tolist() == [[8.0, 9.0], [10.0, 12.0]]


@given(routing_case(), st.data())
def test_token_permute_unpermute_round_trip(case, data):
    x, expert_idx, e = case
    n, k = expert_idx.shape
    indices = expert_idx.reshape(n) if k == 1 and data.draw(st.booleans()) else expert_idx
    permuted, sorted_indices = moe.npu_moe_token_permute(x, indices)
    flat = expert_idx.reshape(-1).tolist()
    order = sorted_pairs(flat)
    assert sorted_indices.dtype == torch.int32
    assert sorted_indices.tolist() == [order.index(f) for f in range(n * k)]
    for p, f in enumerate(order):
        assert torch.equal(permuted[p], x[f // k])
    # per-expert function: row * (expert + 1); unpermute weights by probs
    sorted_experts = torch.tensor([flat[f] for f in order], dtype=torch.float32)
    processed = permuted * (sorted_experts + 1).unsqueeze(1)
    probs = torch.rand(n, k)
    out = moe.npu_moe_token_unpermute(processed, sorted_indices, probs)
    want = torch.zeros(n, x.shape[1], dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            want[i] += float(probs[i, j]) * (flat[i * k + j] + 1) * x[i].double()
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
    if k == 1:  # probs=None means weight 1 and K=1
        out1 = moe.npu_moe_token_unpermute(permuted, sorted_indices)
        assert torch.equal(out1, x)


def test_token_permute_num_out_tokens_drops_tail():
    x = torch.arange(4.0).reshape(4, 1)
    idx = torch.tensor([3, 0, 2, 1])
    permuted, sorted_indices = moe.npu_moe_token_permute(x, idx, num_out_tokens=3)
    assert permuted.flatten().tolist() == [1.0, 3.0, 2.0]
    assert sorted_indices.tolist() == [3, 0, 2, 1]
    permuted_neg, _ = moe.npu_moe_token_permute(x, idx, num_out_tokens=-1)
    assert torch.equal(permuted_neg, permuted)
    out = moe.npu_moe_token_unpermute(permuted, sorted_indices)  # dropped copy adds 0
    assert out.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


@given(st.lists(st.integers(0, 7), max_size=20), st.integers(1, 8))
def test_compute_expert_tokens(ids, num_expert):
    ids = sorted(v for v in ids if v < num_expert)
    out = moe.npu_moe_compute_expert_tokens(torch.tensor(ids, dtype=torch.int32), num_expert)
    assert out.dtype == torch.int32
    assert out.tolist() == [sum(1 for v in ids if v <= c) for c in range(num_expert)]


# ------------------------------------------------------------------------------ bad input


X4 = torch.zeros(2, 4)
IDX = torch.zeros(2, 2, dtype=torch.int32)
DST = IDX.flatten()
V2, FIN = moe.npu_moe_init_routing_v2, moe.npu_moe_finalize_routing


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: moe.npu_moe_gating_top_k_softmax(X4, k=5), "k=5"),
        (lambda: moe.npu_moe_gating_top_k_softmax(X4, torch.zeros(3).bool()), "finished"),
        (lambda: moe.npu_moe_gating_top_k(X4, 5), "k=5"),
        (lambda: moe.npu_moe_gating_top_k(X4, 1, group_count=3), "group_count"),
        (lambda: moe.npu_moe_gating_top_k(X4, 1, group_count=2, k_group=3), "k_group"),
        (lambda: moe.npu_moe_gating_top_k(X4, 3, group_count=2, k_group=1), "k=3"),
        (lambda: moe.npu_moe_gating_top_k(X4, 1, group_select_mode=2), "group_select_mode"),
        (lambda: moe.npu_moe_gating_top_k(X4, 1, norm_type=2), "norm_type"),
        (lambda: moe.npu_moe_gating_top_k(X4, 1, renorm=1), "renorm"),
        (lambda: moe.npu_moe_gating_top_k(X4, 1, bias=torch.zeros(3)), "bias"),
        (lambda: V2(X4, IDX, drop_pad_mode=1), "drop_pad_mode"),
        (lambda: V2(X4, IDX, quant_mode=0), "quant_mode"),
        (lambda: V2(X4, IDX, expert_tokens_num_type=3), "expert_tokens_num_type"),
        (lambda: V2(X4, IDX, row_idx_type=1), "row_idx_type"),
        (lambda: V2(X4, IDX[:1]), "expert_idx"),
        (lambda: V2(X4, IDX + 3, expert_num=2), "expert_num"),
        (lambda: V2(X4, IDX, expert_num=4, active_expert_range=[2, 1]), "active_expert_range"),
        (lambda: V2(X4, IDX, expert_tokens_num_flag=True), "expert_num"),
        (lambda: V2(X4, IDX, x_dtype=99), "x_dtype"),
        (lambda: moe.npu_moe_init_routing(X4, IDX[:, :1], IDX, 2), "row_idx"),
        (lambda: moe.npu_moe_init_routing(X4, IDX, IDX, 2), "row_idx"),
        (lambda: moe.npu_moe_init_routing(X4, IDX + torch.tensor([[0, 2], [1, 3]]), IDX, -1),
         "active_num"),
        (lambda: FIN(X4, None, None, None, None, DST, None, drop_pad_mode=4), "drop_pad_mode"),
        (lambda: FIN(X4, None, None, None, torch.ones(3, 2), DST, None), "scales"),
        (lambda: FIN(X4, torch.ones(1, 4), None, None, None, DST, None, k=2), "skip1"),
        (lambda: FIN(X4, None, None, X4, None, DST, None, k=2), "export_for_source_row"),
        (lambda: moe.npu_moe_token_permute(X4, IDX, padded_mode=True), "padded_mode"),
        (lambda: moe.npu_moe_token_permute(X4, IDX[:1]), "indices"),
        (lambda: moe.npu_moe_token_unpermute(X4, IDX.flatten(), torch.ones(3, 1)), "probs"),
        (lambda: moe.npu_moe_compute_expert_tokens(IDX, -1), "num_expert"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
