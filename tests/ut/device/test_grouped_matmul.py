"""``npu_grouped_matmul``'s MoE form through the one C++ op (``vllm_ascend::grouped_matmul``,
``device/reference/grouped_matmul.py``) against the reference's per-expert path (the oracle,
``VLLM_ASCEND_REFERENCE_EXACT``) and independent float64 / int64 math.

Tolerance (the module docstring): fp32 ``|y - real| <= 1e-5 * (|x| @ |W| + |b|)``; bf16 output
one bf16 rounding on top (``2**-8`` of that magnitude); int8 paths bit-identical.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
from hypothesis import given
from hypothesis import strategies as st

from tests.ut.device.exact import exact_only
from vllm_ascend.device import ops
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import grouped_matmul as gm
from vllm_ascend.device.reference import matmul as mm

pytestmark = pytest.mark.skipif(not ck.native_available(), reason="vllm_ascend._C not built")
needs_int8 = pytest.mark.skipif(not ck.onednn_available(),
                                reason="oneDNN int8 GEMM not exact here (no VNNI/AMX)")

SEEDS = st.integers(0, 2**31 - 1)
ACTS = {0: lambda v: v, 1: lambda v: v.clamp(min=0), 5: lambda v: v / (1 + torch.exp(-v)),
        2: lambda v: 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def reference(*args, **kwargs):
    """The reference's per-expert path (every fast path off)."""
    with exact_only():
        return mm.npu_grouped_matmul(*args, **kwargs)


class _isa:
    """Context: the AVX-512 kernel (where the CPU has it) or the at::mm-per-group path (the
    AVX2 CPUs' path)."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __enter__(self):
        self.saved, gm.isa = gm.isa, self.level

    def __exit__(self, *exc):
        gm.isa = self.saved


ISAS = pytest.mark.parametrize("isa", [
    pytest.param(2, id="avx512", marks=pytest.mark.skipif(
        not torch.cpu._is_avx512_supported(), reason="no AVX-512 here")),
    pytest.param(0, id="atmm")])


@st.composite
def groups(draw, max_m=40, max_e=5):
    """(m, experts, cumulative ends): empty groups, one group with every row, rows past the
    sum, E=1, and fewer group_list entries than experts."""
    experts = draw(st.integers(1, max_e))
    m = draw(st.integers(0, max_m))
    used = draw(st.integers(1, experts))
    kind = draw(st.sampled_from(["random", "one", "past"]))
    if kind == "one":
        at = draw(st.integers(0, used - 1))
        ends = [0] * at + [m] * (used - at)
    else:
        top = m if kind == "random" else draw(st.integers(0, m))
        ends = sorted(draw(st.lists(st.integers(0, top), min_size=used, max_size=used)))
    return m, experts, ends


def as_group_list(ends, counts: bool):
    return torch.tensor([b - a for a, b in zip([0] + ends[:-1], ends)] if counts else ends)


def oracle(x, w, ends, bias=None):
    """float64 ``x @ w[e] (+ b[e])`` per group and its magnitude ``|x| @ |w[e]| + |b[e]|``."""
    m, n = x.shape[0], w.shape[2]
    real, mag = torch.zeros(m, n, dtype=torch.float64), torch.zeros(m, n, dtype=torch.float64)
    for e, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
        xs, we = x[lo:hi].double(), w[e].double()
        real[lo:hi] = xs @ we
        mag[lo:hi] = xs.abs() @ we.abs()
        if bias is not None:
            real[lo:hi] += bias[e].double()
            mag[lo:hi] += bias[e].double().abs()
    return real, mag


@ISAS
@given(case=groups(), k=st.integers(1, 70), n=st.sampled_from([1, 5, 16, 17, 63, 64, 65, 130]),
       seed=SEEDS, bf16=st.booleans(), with_bias=st.booleans(), counts=st.booleans(),
       split_item=st.sampled_from([0, 1, 2, 3]), act_type=st.sampled_from([0, 1, 2, 5]),
       small_kernel_limit=st.booleans())
def test_float_matches_reference_and_float64(isa, case, k, n, seed, bf16, with_bias, counts,
                                             split_item, act_type, small_kernel_limit):
    m, experts, ends = case
    g = gen(seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(experts, k, n, generator=g).to(dtype)
    bias = torch.randn(experts, n, generator=g) if with_bias else None
    kw = dict(bias=None if bias is None else [bias], group_list=as_group_list(ends, counts),
              group_type=0, group_list_type=int(counts), split_item=split_item,
              act_type=act_type)
    saved = gm.KERNEL_MAX_ROWS
    gm.KERNEL_MAX_ROWS = 3 if small_kernel_limit else saved  # larger groups: the at::mm branch
    try:
        with _isa(isa):
            fast = gm.moe_fast(x, [w], scale=None, offset=None, antiquant_scale=None,
                               antiquant_offset=None, per_token_scale=None, dtype=dtype,
                               **{k_: kw[k_] for k_ in ("bias", "group_list", "split_item",
                                                        "group_list_type", "act_type")})
            wired = mm.npu_grouped_matmul([x], [w], **kw)
    finally:
        gm.KERNEL_MAX_ROWS = saved
    assert fast is not None  # the C++ op covers this combination
    ref = reference([x], [w], **kw)
    assert len(fast) == len(ref) == len(wired)
    y, r = torch.cat(fast), torch.cat(ref)
    real, mag = oracle(x, w, ends, bias)
    rows = ends[-1]
    assert y.dtype == dtype and y.shape == r.shape
    if split_item in (2, 3):
        assert y.shape == (m, n) and not y[rows:].any()  # rows past the group sum stay 0
    else:
        assert [t.shape[0] for t in fast] == [b - a for a, b in zip([0] + ends[:-1], ends)]
    y, r, real, mag = y[:rows], r[:rows], real[:rows], mag[:rows]
    act = ACTS[act_type]
    # act is 1-Lipschitz-ish (silu/gelu slope <= 1.13): the bound carries over with that factor.
    want, slack = act(real), 1.2e-5 * mag + 1e-30
    if bf16:
        slack = slack + 2**-8 * want.abs()
    assert bool(((y.double() - want).abs() <= slack).all())
    assert bool(((r.double() - want).abs() <= slack).all())
    assert torch.equal(torch.cat(wired)[:rows], y)


INT8_ISAS = pytest.mark.parametrize("isa", [
    pytest.param(2, id="vnni", marks=pytest.mark.skipif(
        not torch.cpu._is_vnni_supported(), reason="no AVX-512 VNNI here")),
    pytest.param(0, id="onednn")])


@needs_int8
@INT8_ISAS
@given(case=groups(), k=st.sampled_from([1, 7, 64, 100, 1100]),
       n=st.sampled_from([1, 9, 48, 64, 70, 130]),
       seed=SEEDS, mode=st.sampled_from(["raw", "raw_bias", "channel", "token", "token_bf16"]),
       counts=st.booleans(), split_item=st.sampled_from([0, 2]),
       act_type=st.sampled_from([0, 5]), extreme=st.booleans())
def test_int8_bit_identical_to_reference(isa, case, k, n, seed, mode, counts, split_item,
                                         act_type, extreme):
    m, experts, ends = case
    g = gen(seed)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (experts, k, n), dtype=torch.int8, generator=g)
    if extreme:  # the largest |sums|: every product 128 * 128 (the VNNI kernel's headroom)
        x.fill_(-128)
        w.fill_(-128)
    kw = dict(group_list=as_group_list(ends, counts), group_type=0, group_list_type=int(counts),
              split_item=split_item)
    if mode.startswith("raw"):
        kw["output_dtype"] = torch.int32
        if mode == "raw_bias":
            kw["bias"] = [torch.randint(-999, 999, (experts, n), dtype=torch.int32, generator=g)]
    else:
        sdt = torch.bfloat16 if mode == "token_bf16" else torch.float32
        kw["scale"] = [(torch.rand(experts, n, generator=g) * 0.01 + 1e-4).to(sdt)]
        kw["output_dtype"] = torch.bfloat16 if mode == "token_bf16" else torch.float32
        kw["act_type"] = act_type
        if mode == "channel":
            kw["bias"] = [torch.randint(-999, 999, (experts, n), dtype=torch.int32, generator=g)]
        else:
            kw["per_token_scale"] = [(torch.rand(m, generator=g) + 0.1).to(sdt)]
            kw["bias"] = [torch.randn(experts, n, generator=g)]
    with _isa(isa):
        y = mm.npu_grouped_matmul([x], [w], **kw)
    ref = reference([x], [w], **kw)
    assert len(y) == len(ref) and all(torch.equal(a, b) for a, b in zip(y, ref))
    out = torch.cat(y)
    if mode.startswith("raw"):  # and against int64 math
        expected = torch.zeros(m, n, dtype=torch.int64)
        for e, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
            expected[lo:hi] = x[lo:hi].long() @ w[e].long()
            if mode == "raw_bias":
                expected[lo:hi] += kw["bias"][0][e].long()
        assert out.dtype == torch.int32 and torch.equal(out.long(), expected[:out.shape[0]])


@needs_int8
@INT8_ISAS
def test_int8_large_and_small_groups_in_one_call(isa):
    """Groups above KERNEL_MAX_ROWS go to oneDNN, the others to the VNNI kernel (isa 2)."""
    g = gen(3)
    counts = [gm.KERNEL_MAX_ROWS + 5, 0, 3, gm.KERNEL_MAX_ROWS]
    x = torch.randint(-128, 128, (sum(counts) + 2, 96), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (4, 96, 80), dtype=torch.int8, generator=g)
    kw = dict(group_list=torch.tensor(counts), group_type=0, group_list_type=1, split_item=2,
              scale=[torch.rand(4, 80, generator=g)], output_dtype=torch.float32)
    with _isa(isa):
        y = mm.npu_grouped_matmul([x], [w], **kw)[0]
    assert torch.equal(y, reference([x], [w], **kw)[0])


@needs_int8
@pytest.mark.skipif(not torch.cpu._is_vnni_supported(), reason="no AVX-512 VNNI here")
def test_int8_vnni_pack_is_cached_and_rebuilt_after_an_in_place_write():
    g = gen(4)
    x = torch.randint(-128, 128, (5, 64), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (2, 64, 33), dtype=torch.int8, generator=g)  # negatable
    kw = dict(group_list=torch.tensor([2, 3]), group_type=0, group_list_type=1, split_item=2,
              output_dtype=torch.int32)
    before = int(torch.ops.vllm_ascend.grouped_int8_cache(False))
    first = mm.npu_grouped_matmul([x], [w], **kw)[0]
    mm.npu_grouped_matmul([x], [w], **kw)
    assert int(torch.ops.vllm_ascend.grouped_int8_cache(False)) == before + 1  # one pack, a hit
    with torch.no_grad():
        w[1].neg_()  # an EPLB expert move writes a slot in place like this
    again = mm.npu_grouped_matmul([x], [w], **kw)[0]
    assert int(torch.ops.vllm_ascend.grouped_int8_cache(False)) == before + 2
    assert torch.equal(again[:2], first[:2]) and torch.equal(again[2:], -first[2:])
    assert torch.equal(again, reference([x], [w], **kw)[0])


@needs_int8
def test_int8_takes_the_fast_path():
    x = torch.ones(4, 8, dtype=torch.int8)
    w = torch.ones(2, 8, 3, dtype=torch.int8)
    common = dict(bias=None, offset=None, antiquant_scale=None, antiquant_offset=None,
                  group_list=torch.tensor([1, 4]), split_item=2, group_list_type=0, act_type=0)
    raw = gm.moe_fast(x, [w], scale=None, per_token_scale=None, dtype=torch.int32, **common)
    assert raw is not None and raw[0].tolist() == [[8] * 3] * 4
    scaled = gm.moe_fast(x, [w], scale=[torch.full((2, 3), 0.5)],
                         per_token_scale=[torch.full((4,), 2.0)], dtype=torch.float32, **common)
    assert scaled is not None and scaled[0].tolist() == [[8.0] * 3] * 4


def test_uncovered_combinations_use_the_reference():
    x, w = torch.randn(4, 8), torch.randn(2, 8, 3)
    base = dict(bias=None, scale=None, offset=None, antiquant_scale=None, antiquant_offset=None,
                per_token_scale=None, group_list=torch.tensor([1, 4]), split_item=2,
                group_list_type=0, act_type=0, dtype=torch.float32)

    def fast(xx=x, ww=(w,), **over):
        return gm.moe_fast(xx, list(ww), **{**base, **over})

    assert fast() is not None
    assert fast(ww=(w[0], w[1])) is None  # a list of per-expert weights
    assert fast(xx=x.half(), ww=(w.half(),), dtype=torch.float16) is None  # fp16 x
    assert fast(ww=(w.bfloat16(),)) is None  # mixed dtypes
    assert fast(dtype=torch.int8) is None  # requantised output
    assert fast(bias=[torch.ones(2, 1, 3)]) is None  # another bias layout
    assert fast(xx=x[:, :0], ww=(w[:, :0],)) is None  # K = 0
    x8, w8 = x.to(torch.int8), w.to(torch.int8)
    assert fast(xx=x8, ww=(w8,), offset=[torch.ones(2, 3)], scale=[torch.ones(2, 3)]) is None
    assert fast(xx=x8, ww=(w8,), scale=[torch.ones(2, 3, dtype=torch.int64)]) is None
    assert fast(xx=x8, ww=(w8,), scale=[torch.ones(2, 3)], dtype=torch.int8) is None
    assert fast(xx=x8, ww=(w8,), dtype=torch.float32) is None  # the reference raises for it
    with exact_only():
        assert fast() is None


@pytest.mark.parametrize("group_list, group_list_type, match", [
    ([1, 2, 3, 4], 0, "only 3 groups"), ([3, 1], 0, "non-decreasing"), ([3, 9], 0, "rows"),
    ([3, -1], 1, "non-negative"), ([4, 3], 1, "rows"),
])
def test_bad_group_list_raises_value_error_in_cpp(group_list, group_list_type, match):
    x, w = torch.ones(6, 2), torch.ones(3, 2, 4)
    with pytest.raises(ValueError, match=match):
        torch.ops.vllm_ascend.grouped_matmul(x, w, torch.tensor(group_list), group_list_type,
                                             None, None, None, 0, torch.float32, gm.isa,
                                             gm.KERNEL_MAX_ROWS)


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_experts_compile_once_and_match_eager(dtype):
    """experts.grouped_mlp (float MoE experts) under torch.compile: one graph for every row
    count, the same numbers as eager."""
    from vllm_ascend.ops.fused_moe.experts import grouped_mlp

    ops.bind()
    g = gen(3)
    w13 = torch.randn(4, 40, 2 * 24, generator=g).to(dtype)
    w2 = torch.randn(4, 24, 40, generator=g).to(dtype)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(grouped_mlp, backend=counter, dynamic=True, fullgraph=True)
    for counts in ([2, 0, 2, 0], [3, 3, 0, 5], [0, 9, 1, 1]):  # (rows != E: no duck sizing)
        gl = torch.tensor(counts)
        x = torch.randn(sum(counts) + 1, 40, generator=g).to(dtype)  # + a row past the sum
        assert torch.equal(compiled(x, gl, w13, w2), grouped_mlp(x, gl, w13, w2))
    assert counter.frame_count == 1


@needs_int8
@pytest.mark.usefixtures("_fresh_dynamo")
def test_w8a8_dynamic_experts_compile_once_and_match_eager():
    """The W8A8_DYNAMIC expert pipeline (int32 accumulators, then per-token scaled) compiled."""
    ops.bind()
    g = gen(4)
    e, h, i = 3, 48, 20
    w13 = torch.randint(-127, 128, (e, h, 2 * i), dtype=torch.int8, generator=g)
    w2 = torch.randint(-127, 128, (e, i, h), dtype=torch.int8, generator=g)
    s13, s2 = torch.rand(e, 2 * i, generator=g) * 0.01, torch.rand(e, h, generator=g) * 0.01

    def f(xq, aq, a_scale, gl):  # the two grouped matmuls of the pipeline
        groups = dict(group_list=gl, group_type=0, group_list_type=1, split_item=2)
        acc = ops.npu_grouped_matmul([xq], [w13], output_dtype=torch.int32, **groups)[0]
        y = ops.npu_grouped_matmul([aq], [w2], scale=[s2], per_token_scale=[a_scale],
                                   output_dtype=torch.float32, **groups)[0]
        return acc, y

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    cases = []
    for counts in ([2, 0, 1], [4, 1, 3], [0, 0, 7]):
        gl, rows = torch.tensor(counts), sum(counts) + 2  # + rows past the sum
        xq = torch.randint(-127, 128, (rows, h), dtype=torch.int8, generator=g)
        aq = torch.randint(-127, 128, (rows, i), dtype=torch.int8, generator=g)
        a_scale = torch.rand(rows, generator=g) + 0.1
        args = (xq, aq, a_scale, gl)
        cases.append((args, f(*args)))
        got = compiled(*args)
        assert all(torch.equal(a, b) for a, b in zip(got, cases[-1][1]))
    assert counter.frame_count == 1
    with exact_only():  # eager's fast path is bit-identical to the reference's plain path
        assert all(torch.equal(a, b) for args, want in cases for a, b in zip(f(*args), want))
