"""Reference matmul ops vs independent exact-integer / float64 math (torch_npu_ops.md)."""

from __future__ import annotations

import inspect
import math
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference import matmul as mm
from vllm_ascend.device.reference import quant
from vllm_ascend.device.reference._common import pack_int4

SEEDS = st.integers(0, 2**31 - 1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ints(seed, shape, lo=-128, hi=127, dtype=torch.int8):
    return torch.randint(lo, hi + 1, shape, generator=gen(seed), dtype=dtype)


def rand(seed, shape, amp=1.0, lo=None):
    u = torch.rand(shape, generator=gen(seed), dtype=torch.float64)
    low = -amp if lo is None else lo
    return (low + u * (amp - low)).float()


def exact(a, b):
    """Integer matmul in int64: exact, independent of the float64 trick."""
    return (a.long() @ b.long()).double()


def check_close(actual, expected, magnitude, rtol=1e-5):
    """fp32 result vs float64: |a - e| <= rtol * (sum of |terms|), robust to cancellation."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.double() - expected).abs()
    assert bool((err <= rtol * magnitude + 1e-30).all()), (err - rtol * magnitude).max()


def check_rounded(actual, real, lo=-128, hi=127, tie_tol=1e-3):
    """actual == clamp(round_half_even(real)) except within tie_tol of a tie (then +-1)."""
    expected = torch.round(real).clamp(lo, hi)
    near_tie = ((real - torch.floor(real)) - 0.5).abs() < tie_tol
    diff = (actual.double() - expected).abs()
    assert actual.dtype == torch.int8 and actual.shape == expected.shape
    assert bool((diff[~near_tie] == 0).all()) and bool((diff <= 1).all())


def truncated(v: float) -> float:
    """The fp32 value npu_trans_quant_param keeps: low 13 bits of the pattern cleared."""
    bits = struct.unpack("<I", struct.pack("<f", v))[0] & 0xFFFFE000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


@pytest.mark.parametrize("fn, sig", [
    (mm.npu_quant_matmul, "(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None, "
                          "output_dtype=None, x1_dtype=None, x2_dtype=None, "
                          "pertoken_scale_dtype=None, scale_dtype=None, group_sizes=None, "
                          "y_scale=None)"),
    (mm.npu_weight_quant_batchmatmul, "(x, weight, antiquant_scale, antiquant_offset=None, "
                                      "quant_scale=None, quant_offset=None, bias=None, "
                                      "antiquant_group_size=0, inner_precise=0, "
                                      "weight_dtype=None)"),
    (mm.npu_grouped_matmul, "(x, weight, *, bias=None, scale=None, offset=None, "
                            "antiquant_scale=None, antiquant_offset=None, per_token_scale=None, "
                            "group_list=None, activation_input=None, activation_quant_scale=None, "
                            "activation_quant_offset=None, split_item=0, group_type=None, "
                            "group_list_type=0, act_type=0, tuning_config=None, output_dtype=None, "
                            "x_dtype=None, weight_dtype=None, scale_dtype=None, "
                            "per_token_scale_dtype=None)"),
])
def test_signatures_match_schema(fn, sig):
    assert str(inspect.signature(fn)) == sig


# ---------------------------------------------------------------- npu_quant_matmul


@given(m=st.integers(0, 5), k=st.integers(1, 40), n=st.integers(1, 9),
       batch=st.sampled_from([(), (2,)]), seed=SEEDS, transposed=st.booleans(),
       per_channel=st.booleans(), bias_kind=st.sampled_from([None, "int", "float"]),
       use_offset=st.booleans(), use_pertoken=st.booleans(),
       out=st.sampled_from([None, torch.float32, 6]))
def test_quant_matmul(m, k, n, batch, seed, transposed, per_channel, bias_kind, use_offset,
                      use_pertoken, out):
    a = ints(seed, (*batch, m, k))
    b = ints(seed + 1, (n, k)).t() if transposed else ints(seed + 1, (k, n))
    scale = rand(seed + 2, (n if per_channel else 1,), 0.02, lo=1e-4)
    use_offset = use_offset and not use_pertoken and bias_kind != "float"
    offset = rand(seed + 3, (n,), 5.0) if use_offset else None
    pt = rand(seed + 4, (m,), 2.0, lo=0.1) if use_pertoken else None
    bias = {None: None, "int": ints(seed + 5, (n,), -1000, 1000, torch.int32),
            "float": rand(seed + 5, (n,), 5.0)}[bias_kind]
    y = mm.npu_quant_matmul(a, b, scale, offset=offset, pertoken_scale=pt, bias=bias,
                            output_dtype=out)
    acc = exact(a, b)
    if bias_kind == "int":
        acc = acc + bias.double()
    real = acc * scale.double()
    if pt is not None:
        real = real * pt.double()[:, None]
    mag = real.abs()
    if offset is not None:
        real, mag = real + offset.double(), mag + offset.double().abs()
    if bias_kind == "float":
        real, mag = real + bias.double(), mag + bias.double().abs()
    if out is None:
        check_rounded(y, real)
    else:
        assert y.dtype == torch.float32
        check_close(y, real, mag)


@given(m=st.integers(0, 4), k=st.integers(1, 30), n=st.integers(1, 6), seed=SEEDS,
       with_bias=st.booleans())
def test_quant_matmul_int32_output_is_raw_accumulator(m, k, n, seed, with_bias):
    """Pinned choice: output_dtype=int32 returns acc (+ int32 bias); scale is not applied."""
    a, b = ints(seed, (m, k)), ints(seed + 1, (k, n))
    bias = ints(seed + 2, (n,), -10**6, 10**6, torch.int32) if with_bias else None
    y = mm.npu_quant_matmul(a, b, torch.tensor([0.5]), bias=bias, output_dtype=torch.int32)
    expected = a.long() @ b.long() + (0 if bias is None else bias.long())
    assert y.dtype == torch.int32 and torch.equal(y.long(), expected)


def test_quant_matmul_accumulates_exactly_for_large_k():
    k = 4096
    a = torch.full((2, k), 127, dtype=torch.int8)
    b = torch.full((k, 3), -128, dtype=torch.int8)
    b[0, 1] = 127
    expected = a.long() @ b.long()  # -66584576 needs more than fp32's 24 bits
    assert torch.equal(mm.npu_quant_matmul(a, b, torch.ones(1), output_dtype=3).long(), expected)
    assert not torch.equal((a @ b).long(), expected)  # torch's int8 matmul wraps around
    g = gen(7)
    for k in (1023, 1024, 1025, 2000, 3001):  # around the fp32 / float64 switch at K = 1024
        a = torch.randint(-128, 128, (3, k), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (k, 5), generator=g, dtype=torch.int8)
        a[0], b[:, 0] = -128, -128  # row 0 x column 0 reaches k * 2**14
        a[1], b[:, 1] = 127, 127  # odd partial sums beyond 2**24: inexact in fp32
        y = mm.npu_quant_matmul(a, b, torch.ones(1), output_dtype=torch.int32)
        assert torch.equal(y.long(), a.long() @ b.long())


def test_quant_matmul_int8_output_rounds_half_even_and_saturates():
    a = torch.tensor([[1], [3], [5], [-3], [100], [-100]], dtype=torch.int8)
    b = torch.tensor([[1, 2]], dtype=torch.int8)
    y = mm.npu_quant_matmul(a, b, torch.tensor([0.5, 2.0]))
    assert y.dtype == torch.int8
    assert y.tolist() == [[0, 4], [2, 12], [2, 20], [-2, -12], [50, 127], [-50, -128]]


@given(m=st.integers(0, 4), k=st.integers(1, 20), n=st.integers(1, 6), seed=SEEDS,
       with_offset=st.booleans())
def test_quant_matmul_int64_quant_param_scale(m, k, n, seed, with_offset):
    a, b = ints(seed, (m, k)), ints(seed + 1, (k, n))
    scale = rand(seed + 2, (n,), 0.05, lo=1e-3)
    offset = rand(seed + 3, (n,), 20.0).round() if with_offset else None
    enc = quant.npu_trans_quant_param(scale, offset)
    s64 = torch.tensor([truncated(v) for v in scale.tolist()], dtype=torch.float64)
    real = exact(a, b) * s64
    # The offset encoded in the int64 scale is applied when offset=None.
    if with_offset:
        real = real + offset.double()
    check_rounded(mm.npu_quant_matmul(a, b, enc), real)
    y = mm.npu_quant_matmul(a, b, enc, output_dtype=torch.float32)
    check_close(y, real, real.abs() + (0 if offset is None else offset.double().abs()))
    # An explicit offset wins over the encoded one.
    y0 = mm.npu_quant_matmul(a, b, enc, offset=torch.zeros(1), output_dtype=torch.float32)
    check_close(y0, exact(a, b) * s64, (exact(a, b) * s64).abs())


@given(m=st.integers(0, 4), kw=st.integers(1, 4), nw=st.integers(1, 3), seed=SEEDS,
       transposed=st.booleans())
def test_quant_matmul_int4_packed_operands(m, kw, nw, seed, transposed):
    k, n = 8 * kw, 8 * nw
    a, b = ints(seed, (m, k), -8, 7), ints(seed + 1, (k, n), -8, 7)
    x2 = pack_int4(b.t().contiguous()).t() if transposed else pack_int4(b)
    scale = rand(seed + 2, (n,), 0.1, lo=0.01)
    y = mm.npu_quant_matmul(pack_int4(a), x2, scale, output_dtype=torch.float32)
    real = exact(a, b) * scale.double()
    check_close(y, real, real.abs())


@pytest.mark.parametrize("kwargs, match", [
    ({"x1": torch.ones(2, 3)}, "int8"),
    ({"x2": torch.ones(3, 4, dtype=torch.int32)}, "int8"),
    ({"x2": torch.ones(5, 4, dtype=torch.int8)}, "k"),
    ({"x1": torch.ones(3, dtype=torch.int8)}, "2-d"),
    ({"output_dtype": torch.float64}, "output_dtype"),
    ({"output_dtype": 99}, "output_dtype"),
    ({"offset": torch.ones(4), "pertoken_scale": torch.ones(2)}, "pertoken"),
    ({"offset": torch.ones(4), "bias": torch.ones(4)}, "floating bias"),
    ({"scale": torch.ones(3)}, "scale"),
    ({"pertoken_scale": torch.ones(3)}, "pertoken_scale"),
    ({"bias": torch.ones(5, dtype=torch.int32)}, "bias"),
    ({"bias": torch.ones(4, dtype=torch.int64)}, "bias"),
    ({"group_sizes": [1, 1, 128]}, "group_sizes"),
    ({"output_dtype": torch.int32, "pertoken_scale": torch.ones(2)}, "raw"),
])
def test_quant_matmul_rejects(kwargs, match):
    args = {"x1": torch.ones(2, 3, dtype=torch.int8), "x2": torch.ones(3, 4, dtype=torch.int8),
            "scale": torch.ones(1)}
    args.update(kwargs)
    x1, x2, scale = args.pop("x1"), args.pop("x2"), args.pop("scale")
    with pytest.raises(ValueError, match=match):
        mm.npu_quant_matmul(x1, x2, scale, **args)


# ---------------------------------------------------------------- npu_weight_quant_batchmatmul


def expand_param(p, k, n, group):
    """(1,)/(n,)/(1, n)/(ceil(k/G), n) -> float64 (k, n), by explicit indexing."""
    p = p.double()
    if group:
        return p[torch.arange(k) // group]
    return p.reshape(-1).expand(n).reshape(1, n).expand(k, n) if p.numel() == 1 \
        else p.reshape(1, n).expand(k, n)


@given(m=st.integers(0, 5), kw=st.integers(1, 5), nw=st.integers(1, 2), seed=SEEDS,
       data=st.data(), layout=st.sampled_from(["int8", "int8_t", "int4", "int4_t"]),
       gran=st.sampled_from(["tensor", "channel", "channel2d", "group"]),
       with_offset=st.booleans(), with_bias=st.booleans(), requant=st.booleans())
def test_weight_quant_batchmatmul(m, kw, nw, seed, data, layout, gran, with_offset,
                                  with_bias, requant):
    int4 = layout.startswith("int4")
    k = 8 * kw if int4 else data.draw(st.integers(1, 40))
    n = 8 * nw if int4 else data.draw(st.integers(1, 12))
    w = ints(seed, (k, n), -8, 7) if int4 else ints(seed, (k, n))
    if layout == "int8_t":
        weight = w.t().contiguous().t()
    elif layout == "int4":
        weight = pack_int4(w)
    elif layout == "int4_t":
        weight = pack_int4(w.t().contiguous()).t()
    else:
        weight = w
    group = data.draw(st.integers(1, k)) if gran == "group" else 0
    shape = {"tensor": (1,), "channel": (n,), "channel2d": (1, n),
             "group": (math.ceil(k / group) if group else 1, n)}[gran]
    scale = rand(seed + 1, shape, 0.1, lo=0.001)
    offset = rand(seed + 2, shape, 4.0).round() if with_offset else None
    bias = rand(seed + 3, (n,), 2.0) if with_bias else None
    x = rand(seed + 4, (m, k), 1.0)
    qs = rand(seed + 5, (n,), 40.0, lo=5.0) if requant else None
    qo = rand(seed + 6, (n,), 3.0).round() if requant else None
    y = mm.npu_weight_quant_batchmatmul(x, weight, scale, offset, qs, qo, bias,
                                        antiquant_group_size=group)
    wf = w.double() + (0 if offset is None else expand_param(offset, k, n, group))
    W = wf * expand_param(scale, k, n, group)
    real = x.double() @ W
    mag = x.double().abs() @ W.abs()
    if bias is not None:
        real, mag = real + bias.double(), mag + bias.double().abs()
    if requant:
        check_rounded(y, real * qs.double() + qo.double())
    else:
        assert y.dtype == torch.float32
        check_close(y, real, mag)


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.ones(2, 3, dtype=torch.int8), torch.ones(3, 4, dtype=torch.int8), torch.ones(1)),
     {}, "x must be"),
    ((torch.ones(2, 3), torch.ones(3, 4), torch.ones(1)), {}, "weight"),
    ((torch.ones(2, 3), torch.ones(5, 4, dtype=torch.int8), torch.ones(1)), {}, "weight"),
    ((torch.ones(2, 16), torch.ones(5, 3, dtype=torch.int32), torch.ones(1)), {}, "weight"),
    ((torch.ones(2, 3), torch.ones(3, 4, dtype=torch.int8), torch.ones(3)), {}, "antiquant_scale"),
    ((torch.ones(2, 6), torch.ones(6, 4, dtype=torch.int8), torch.ones(2, 4)),
     {"antiquant_group_size": 2}, "ceil"),
    ((torch.ones(2, 6), torch.ones(6, 4, dtype=torch.int8), torch.ones(1)),
     {"antiquant_group_size": -1}, "antiquant_group_size"),
    ((torch.ones(2, 3), torch.ones(3, 4, dtype=torch.int8), torch.ones(1)),
     {"quant_offset": torch.ones(1)}, "quant_scale"),
])
def test_weight_quant_batchmatmul_rejects(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mm.npu_weight_quant_batchmatmul(*args, **kwargs)


# ---------------------------------------------------------------- npu_grouped_matmul

MODES = ["float", "perchannel", "perchannel_int8", "pertoken", "antiquant", "antiquant4", "raw"]


@given(m=st.integers(0, 10), k=st.integers(1, 12), nw=st.integers(1, 2), experts=st.integers(1, 4),
       seed=SEEDS, data=st.data(), mode=st.sampled_from(MODES), counts=st.booleans(),
       listed_weights=st.booleans())
def test_grouped_matmul_moe(m, k, nw, experts, seed, data, mode, counts, listed_weights):
    n = 8 * nw if mode == "antiquant4" else data.draw(st.integers(1, 9))
    used = data.draw(st.integers(1, experts))
    ends = sorted(data.draw(st.lists(st.integers(0, m), min_size=used, max_size=used)))
    group_list = torch.tensor([b - a for a, b in zip([0] + ends[:-1], ends)] if counts else ends)
    int_x = mode in ("perchannel", "perchannel_int8", "pertoken", "raw")
    X = ints(seed, (m, k)) if int_x else rand(seed, (m, k))
    lo_w, hi_w = (-8, 7) if mode == "antiquant4" else (-128, 127)
    w = ints(seed + 1, (experts, k, n), lo_w, hi_w)
    kw, per_row = {}, None
    if mode == "float":
        w = rand(seed + 1, (experts, k, n))
        kw["bias"] = rand(seed + 2, (experts, n))
    elif mode in ("perchannel", "perchannel_int8"):
        kw["bias"] = ints(seed + 2, (experts, n), -500, 500, torch.int32)
        kw["scale"] = rand(seed + 3, (experts, n), 0.02, lo=1e-3)
        kw["output_dtype"] = torch.float32 if mode == "perchannel" else None
    elif mode == "pertoken":
        kw["scale"] = rand(seed + 3, (experts, n), 0.02, lo=1e-3)
        per_row = rand(seed + 4, (m,), 2.0, lo=0.1)
        kw["per_token_scale"] = [per_row]
        kw["output_dtype"] = torch.float32
    elif mode.startswith("antiquant"):
        divisors = [d for d in range(1, k + 1) if k % d == 0]
        groups = data.draw(st.sampled_from(divisors))
        shape = (experts, groups, n) if groups > 1 else (experts, n)
        kw["antiquant_scale"] = rand(seed + 3, shape, 0.1, lo=0.01)
        kw["antiquant_offset"] = rand(seed + 4, shape, 3.0).round()
        kw["bias"] = rand(seed + 2, (experts, n))
    else:
        kw["output_dtype"] = data.draw(st.sampled_from([None, torch.int32]))
    weight = pack_int4(w) if mode == "antiquant4" else w
    weights = list(weight) if listed_weights else [weight]
    params = {name: (list(v) if listed_weights else [v])
              for name, v in kw.items() if name in mm._GMM_PARAMS}
    others = {name: v for name, v in kw.items() if name not in mm._GMM_PARAMS}
    (y,) = mm.npu_grouped_matmul([X], weights, group_list=group_list, split_item=2, group_type=0,
                                 group_list_type=1 if counts else 0, **params, **others)

    real = torch.zeros(m, n, dtype=torch.float64)
    mag = torch.zeros(m, n, dtype=torch.float64)
    for e, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
        xs = X[lo:hi].double()
        if mode == "float":
            real[lo:hi] = xs @ w[e].double() + kw["bias"][e].double()
            mag[lo:hi] = xs.abs() @ w[e].double().abs() + kw["bias"][e].double().abs()
        elif mode in ("perchannel", "perchannel_int8"):
            real[lo:hi] = (exact(X[lo:hi], w[e]) + kw["bias"][e].double()) * kw["scale"][e].double()
        elif mode == "pertoken":
            real[lo:hi] = exact(X[lo:hi], w[e]) * kw["scale"][e].double() \
                * per_row[lo:hi].double()[:, None]
        elif mode.startswith("antiquant"):
            s, o = kw["antiquant_scale"][e].double(), kw["antiquant_offset"][e].double()
            if s.dim() == 2:  # per group of k / groups rows
                rows = torch.arange(k) // (k // s.shape[0])
                s, o = s[rows], o[rows]
            W = (w[e].double() + o) * s
            real[lo:hi] = xs @ W + kw["bias"][e].double()
            mag[lo:hi] = xs.abs() @ W.abs() + kw["bias"][e].double().abs()
        else:
            real[lo:hi] = exact(X[lo:hi], w[e])
    # rows past the group_list total are not written: they stay 0 (pinned choice)
    assert y.shape == (m, n) and not y[ends[-1]:].any()
    if mode == "raw":
        assert y.dtype == torch.int32 and torch.equal(y.double(), real)
    elif mode == "perchannel_int8":
        check_rounded(y, real)
    else:
        check_close(y, real, mag if mode in ("float", "antiquant", "antiquant4") else real.abs())


@given(pairs=st.integers(1, 3), seed=SEEDS, data=st.data(), int8=st.booleans(),
       split_item=st.sampled_from([0, 1, 2, 3]))
def test_grouped_matmul_list_form(pairs, seed, data, int8, split_item):
    xs, ws, bs = [], [], []
    for i in range(pairs):
        m, k = data.draw(st.integers(0, 4)), data.draw(st.integers(1, 8))
        n = 5 if split_item in (2, 3) else data.draw(st.integers(1, 6))
        xs.append(ints(seed + i, (m, k)) if int8 else rand(seed + i, (m, k)))
        ws.append(ints(seed + 10 + i, (k, n)) if int8 else rand(seed + 10 + i, (k, n)))
        bs.append(ints(seed + 20 + i, (n,), -9, 9, torch.int32) if int8
                  else rand(seed + 20 + i, (n,)))
    outs = mm.npu_grouped_matmul(xs, ws, bias=bs, split_item=split_item,
                                 output_dtype=torch.int32 if int8 else None)
    expected = [exact(x, w) + b.double() if int8 else x.double() @ w.double() + b.double()
                for x, w, b in zip(xs, ws, bs)]
    mags = [x.double().abs() @ w.double().abs() + b.double().abs() for x, w, b in zip(xs, ws, bs)]
    if split_item in (2, 3):
        expected, mags = [torch.cat(expected)], [torch.cat(mags)]
    assert len(outs) == len(expected)
    for y, e, mag in zip(outs, expected, mags):
        if int8:
            assert y.dtype == torch.int32 and torch.equal(y.double(), e)
        else:
            check_close(y, e, mag)


def test_grouped_matmul_split_per_group_and_activations():
    X, W = rand(1, (7, 4)), rand(2, (3, 4, 5))
    outs = mm.npu_grouped_matmul([X], [W], group_list=torch.tensor([2, 0, 5]), group_type=0,
                                 group_list_type=1, split_item=0)
    assert [o.shape[0] for o in outs] == [2, 0, 5]
    torch.testing.assert_close(outs[2], X[2:7] @ W[2])
    acts = {1: lambda v: v.clamp(min=0), 5: lambda v: v / (1 + torch.exp(-v)),
            2: lambda v: 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))}
    for act_type, f in acts.items():
        (y,) = mm.npu_grouped_matmul([X], [W], group_list=torch.tensor([3, 3, 7]), group_type=0,
                                     split_item=3, act_type=act_type)
        real = torch.cat([X[:3].double() @ W[0].double(), X[3:].double() @ W[2].double()])
        torch.testing.assert_close(y.double(), f(real), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"group_list": torch.tensor([1, 2, 3, 4])}, "only 3 groups"),
    ({"group_list": torch.tensor([3, 1])}, "non-decreasing"),
    ({"group_list": torch.tensor([3, 9])}, "rows"),
    ({"group_list": torch.tensor([3, -1]), "group_list_type": 1}, "non-negative"),
    ({"group_list": torch.tensor([4, 3]), "group_list_type": 1}, "rows"),
    ({"group_list_type": 2}, "group_list_type"),
    ({"group_type": 2}, "group_type"),
    ({"split_item": 5}, "split_item"),
    ({"act_type": 3}, "act_type"),
    ({"activation_input": [torch.ones(1)]}, "activation_input"),
    ({"bias": [torch.ones(3, 4), torch.ones(3, 4)]}, "bias"),
    ({"bias": [torch.ones(3, 5)]}, "bias"),
    ({"scale": [torch.ones(3, 4)]}, "int8 x"),
    ({"output_dtype": torch.float64}, "output_dtype"),
    ({"per_token_scale": [torch.ones(2)]}, "per_token_scale"),
])
def test_grouped_matmul_rejects(kwargs, match):
    args = {"group_list": torch.tensor([2, 6]), "group_type": 0, "split_item": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mm.npu_grouped_matmul([torch.ones(6, 2)], [torch.ones(3, 2, 4)], **args)


def test_grouped_matmul_rejects_bad_quant_inputs():
    x8, w8 = torch.ones(4, 2, dtype=torch.int8), torch.ones(2, 2, 3, dtype=torch.int8)
    gl = dict(group_list=torch.tensor([1, 4]), group_type=0, split_item=2)
    with pytest.raises(ValueError, match="int8 weight"):
        mm.npu_grouped_matmul([x8], [torch.ones(2, 2, 3)], scale=[torch.ones(2, 3)], **gl)
    with pytest.raises(ValueError, match="raw int32"):
        mm.npu_grouped_matmul([x8], [w8], output_dtype=torch.float32, **gl)
    with pytest.raises(ValueError, match="antiquant_scale"):
        mm.npu_grouped_matmul([torch.ones(4, 2)], [w8], **gl)
    with pytest.raises(ValueError, match="divisible"):
        mm.npu_grouped_matmul([torch.ones(4, 3)], [torch.ones(2, 3, 3, dtype=torch.int8)],
                              antiquant_scale=[torch.ones(2, 2, 3)], **gl)
    with pytest.raises(ValueError, match="equal lengths"):
        mm.npu_grouped_matmul([torch.ones(2, 2)], [torch.ones(2, 2), torch.ones(2, 2)])


# ------------------------------------------- npu_grouped_matmul A8W4 (int8 x, packed int4 W)

@given(m=st.integers(0, 9), groups=st.integers(1, 3), gk=st.integers(1, 4), nw=st.integers(1, 2),
       experts=st.integers(1, 3), seed=SEEDS, data=st.data(), int64_scale=st.booleans())
def test_grouped_matmul_a8w4_multiplies_x_minus_8(m, groups, gk, nw, experts, seed, data,
                                                  int64_scale):
    """Pinned model of the device A8W4 kernel: it multiplies ``x - 8`` (x split into two int4
    halves) and adds the float bias before the per-token scale."""
    k, n = groups * gk, 8 * nw
    X, w = ints(seed, (m, k)), ints(seed + 1, (experts, k, n), -8, 7)
    s = rand(seed + 2, (experts, groups, n), 0.05, lo=1e-3)
    if int64_scale:  # fp32 pattern in the low 32 bits, as the W4A8 MoE scheme passes it
        words = quant.npu_trans_quant_param(s.reshape(-1), round_mode=1) & 0xFFFFFFFF
        s_arg, s = words.reshape(s.shape), quant.decode_quant_param(words).reshape(s.shape)
    else:
        s_arg = s
    bias, pts = rand(seed + 3, (experts, n), 5.0), rand(seed + 4, (m,), 2.0, lo=0.1)
    ends = sorted(data.draw(st.lists(st.integers(0, m), min_size=experts, max_size=experts)))
    counts = [b - a for a, b in zip([0] + ends[:-1], ends)]
    (y,) = mm.npu_grouped_matmul([X], [pack_int4(w)], scale=[s_arg], bias=[bias],
                                 per_token_scale=[pts], group_list=torch.tensor(counts),
                                 group_type=0, group_list_type=1, split_item=2,
                                 output_dtype=torch.float32)
    real = torch.zeros(m, n, dtype=torch.float64)
    mag, lo = torch.zeros_like(real), 0
    rows = torch.arange(k) // gk
    for e, c in enumerate(counts):
        xs = X[lo:lo + c].double() - 8
        W = w[e].double() * s[e].double()[rows]
        real[lo:lo + c] = (xs @ W + bias[e].double()) * pts[lo:lo + c].double()[:, None]
        mag[lo:lo + c] = (xs.abs() @ W.abs() + bias[e].double().abs()) \
            * pts[lo:lo + c].double()[:, None]
        lo += c
    assert not y[lo:].any()  # rows past the total stay 0
    check_close(y, real, mag)


def test_grouped_matmul_a8w4_bias_restores_the_exact_product():
    X, w = ints(1, (6, 16)), ints(2, (2, 16, 8), -8, 7)
    s = rand(3, (2, 2, 8), 0.05, lo=1e-3)
    W = w.double() * s.double().repeat_interleave(8, dim=1)  # (E, K, N) dequantised
    bias = (8 * W.sum(dim=1)).float()
    (y,) = mm.npu_grouped_matmul([X], [pack_int4(w)], scale=[s], bias=[bias],
                                 group_list=torch.tensor([4, 2]), group_type=0,
                                 group_list_type=1, split_item=2, output_dtype=torch.float32)
    real = torch.cat([X[:4].double() @ W[0], X[4:].double() @ W[1]])
    mag = torch.cat([(X[:4].double().abs() + 8) @ W[0].abs(),
                     (X[4:].double().abs() + 8) @ W[1].abs()])
    check_close(y, real, mag)


@pytest.mark.parametrize("kwargs, match", [
    ({"offset": [torch.ones(2, 8)]}, "no offset"),
    ({"bias": [torch.ones(2, 8, dtype=torch.int32)]}, "floating bias"),
    ({"output_dtype": torch.int32}, "raw int32"),
    ({"scale": [torch.ones(2, 3, 8)]}, "per-group scale"),
])
def test_grouped_matmul_a8w4_rejects(kwargs, match):
    args = {"scale": [torch.ones(2, 2, 8)], "group_list": torch.tensor([1, 3]), "group_type": 0,
            "split_item": 2, "output_dtype": torch.float32}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mm.npu_grouped_matmul([torch.ones(4, 4, dtype=torch.int8)],
                              [pack_int4(torch.zeros(2, 4, 8, dtype=torch.int8))], **args)
