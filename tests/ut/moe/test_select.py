"""select_experts against a float64 oracle (softmax top-k, sigmoid, DeepSeek-V3 noaux_tc)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from vllm_ascend.ops.fused_moe import select_experts


def oracle(logits, k, *, scoring, renormalize, bias=None, groups=1, topk_group=1, scale=1.0):
    """float64 loops -> (ids rows, weight rows, selection margin)."""
    ids_out, w_out, margin = [], [], math.inf
    n, e = logits.shape
    gsize = e // groups
    for i in range(n):
        row = [float(v) for v in logits[i].double()]
        if scoring == "sigmoid":
            s = [1 / (1 + math.exp(-v)) for v in row]
        else:
            top = max(row)
            z = sum(math.exp(v - top) for v in row)
            s = [math.exp(v - top) / z for v in row]
        sb = [s[c] + (float(bias[c]) if bias is not None else 0.0) for c in range(e)]
        allowed = list(range(e))
        if groups > 1:
            scores = []
            for g in range(groups):
                members = sorted(sb[g * gsize:(g + 1) * gsize], reverse=True)
                scores.append(members[0] + members[1] if bias is not None else members[0])
            ranked = sorted(range(groups), key=lambda g: -scores[g])
            if topk_group < groups:
                margin = min(margin, scores[ranked[topk_group - 1]] - scores[ranked[topk_group]])
            allowed = [c for g in ranked[:topk_group] for c in range(g * gsize, (g + 1) * gsize)]
        ranked_e = sorted(allowed, key=lambda c: -sb[c])
        for a, b in zip(ranked_e[: k + 1], ranked_e[1: k + 1]):
            margin = min(margin, sb[a] - sb[b])
        chosen = ranked_e[:k]
        w = [s[c] for c in chosen]
        if renormalize:
            total = sum(w)
            w = [v / total for v in w]
        ids_out.append(chosen)
        w_out.append([v * scale for v in w])
    return ids_out, w_out, margin


def logits_for(seed: int, n: int, e: int, spread: float, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, e, generator=g, dtype=torch.float64) * spread).to(dtype)


def check(logits, k, *, strict=False, **kw):
    """select_experts == oracle; a near-tie is skipped (hypothesis) or fails (strict)."""
    weights, ids = select_experts(
        logits, k, scoring=kw["scoring"], renormalize=kw["renormalize"],
        e_score_correction_bias=kw.get("bias"),
        num_expert_group=kw.get("groups") if kw.get("groups", 1) > 1 else None,
        topk_group=kw.get("topk_group") if kw.get("groups", 1) > 1 else None,
        routed_scaling_factor=kw.get("scale", 1.0),
    )
    ids_ref, w_ref, margin = oracle(logits, k, **kw)
    if strict:
        assert margin > 1e-5
    else:
        assume(margin > 1e-5)  # fp32 and fp64 must agree on the selection
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (logits.shape[0], k)
    assert ids.tolist() == ids_ref
    want = torch.tensor(w_ref, dtype=torch.float64).reshape(weights.shape)
    torch.testing.assert_close(weights.double(), want, rtol=2e-6, atol=1e-7)
    return weights


@given(
    seed=st.integers(0, 2**16), n=st.integers(0, 6), e=st.integers(1, 12),
    k_frac=st.floats(0, 1), renormalize=st.booleans(), scale=st.sampled_from([1.0, 2.5]),
    spread=st.sampled_from([0.5, 2.0, 6.0]), bf16=st.booleans(),
)
def test_softmax_top_k(seed, n, e, k_frac, renormalize, scale, spread, bf16):
    k = 1 + int(k_frac * (e - 1))
    logits = logits_for(seed, n, e, spread, torch.bfloat16 if bf16 else torch.float32)
    weights = check(logits, k, scoring="softmax", renormalize=renormalize, scale=scale)
    if renormalize and n:
        torch.testing.assert_close(weights.sum(-1), torch.full((n,), scale), rtol=1e-6, atol=0)


@given(
    seed=st.integers(0, 2**16), n=st.integers(0, 6), e=st.integers(1, 12),
    k_frac=st.floats(0, 1), renormalize=st.booleans(), biased=st.booleans(),
)
def test_sigmoid_top_k_with_and_without_renormalisation(seed, n, e, k_frac, renormalize, biased):
    k = 1 + int(k_frac * (e - 1))
    bias = logits_for(seed + 1, 1, e, 0.1)[0] if biased else None
    check(logits_for(seed, n, e, 2.0), k, scoring="sigmoid", renormalize=renormalize, bias=bias)


@st.composite
def noaux_tc_case(draw):
    groups = draw(st.sampled_from([2, 4, 8]))
    gsize = draw(st.integers(2, 4))
    topk_group = draw(st.integers(1, groups))
    k = draw(st.integers(1, topk_group * gsize))
    return dict(
        seed=draw(st.integers(0, 2**16)), n=draw(st.integers(0, 5)), e=groups * gsize,
        groups=groups, topk_group=topk_group, k=k, scale=draw(st.sampled_from([1.0, 2.5])),
    )


@given(noaux_tc_case())
def test_deepseek_noaux_tc(case):
    """sigmoid + bias -> grouped top-k (groups scored by their top-2 sum) -> renorm -> scale."""
    logits = logits_for(case["seed"], case["n"], case["e"], 2.0)
    bias = logits_for(case["seed"] + 7, 1, case["e"], 0.2)[0]
    weights = check(logits, case["k"], scoring="sigmoid", renormalize=True, bias=bias,
                    groups=case["groups"], topk_group=case["topk_group"], scale=case["scale"])
    if case["n"]:
        torch.testing.assert_close(weights.sum(-1), torch.full((case["n"],), case["scale"]))


@given(noaux_tc_case(), st.booleans())
def test_grouped_softmax_without_bias_scores_groups_by_max(case, renormalize):
    logits = logits_for(case["seed"], case["n"], case["e"], 2.0)
    check(logits, case["k"], scoring="softmax", renormalize=renormalize,
          groups=case["groups"], topk_group=case["topk_group"], scale=case["scale"])


def test_deepseek_v3_shape():
    """The real configuration: E=256, 8 groups, top-4 groups, k=8, factor 2.5."""
    logits = logits_for(3, 16, 256, 1.0, torch.bfloat16)
    bias = logits_for(4, 1, 256, 0.05)[0]
    weights = check(logits, 8, strict=True, scoring="sigmoid", renormalize=True, bias=bias,
                    groups=8, topk_group=4, scale=2.5)
    assert weights.shape == (16, 8)


def test_softmax_without_renormalisation_keeps_the_probabilities():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    weights, ids = select_experts(logits, 2)
    p = torch.softmax(logits.double(), -1)[0]
    assert ids.tolist() == [[3, 2]]
    torch.testing.assert_close(weights.double(), p[[3, 2]].unsqueeze(0))
    weights, _ = select_experts(logits, 2, renormalize=True)
    torch.testing.assert_close(weights.double(), (p[[3, 2]] / p[[3, 2]].sum()).unsqueeze(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scoring="relu"), r"scoring='relu'; accepted: 'softmax', 'sigmoid'"),
        (dict(num_expert_group=2), r"must be given together"),
        (dict(topk_group=1), r"must be given together"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_experts(torch.zeros(2, 4), 2, **kwargs)


def test_logits_must_be_2d():
    with pytest.raises(ValueError, match=r"router_logits must be \(N, E\)"):
        select_experts(torch.zeros(4), 2)
