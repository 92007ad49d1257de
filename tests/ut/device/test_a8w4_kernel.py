"""The A8W4 fast path (``cpu_kernels.a8w4_mm`` / csrc ``a8w4_matmul``) gives the reference's
numbers: exact integer group sums ``acc_g = sum_{k in g} (x - 8) * w``, then
``sum_g float(acc_g) * s[g]`` in fp32, checked against an independent float64 computation
within fp32 tolerance, on every ISA path (AVX-512 VNNI, AVX-VNNI, AVX2 ``vpmaddubsw``), and
``npu_grouped_matmul``'s A8W4 (list and MoE forms, eager and compiled) against its plain path.
No timing here."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch._dynamo
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import matmul as mm
from vllm_ascend.device.reference import quant
from vllm_ascend.device.reference._common import pack_int4

pytestmark = pytest.mark.skipif(not ck.native_available(),
                                reason="vllm_ascend._C (csrc/) is not built here")

SEEDS = st.integers(0, 2**31 - 1)
#: a8w4_matmul's paths; the kernel falls back to what the CPU has (2 -> 1 -> 0).
ISAS = [2, 1, 0]
U = 2.0**-24


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ints(seed, shape, lo, hi):
    return torch.randint(lo, hi + 1, shape, generator=gen(seed), dtype=torch.int8)


def extremes(seed, shape, lo, hi):
    """Only the two ends of the range (the worst case for int16 pair sums)."""
    return torch.where(torch.rand(shape, generator=gen(seed)) < 0.5, lo, hi).to(torch.int8)


def rand(seed, shape, amp=1.0, lo=None):
    u = torch.rand(shape, generator=gen(seed), dtype=torch.float64)
    low = -amp if lo is None else lo
    return (low + u * (amp - low)).float()


def model(x, w, s):
    """float64: (the real sum_g acc_g * s[g], sum_g |acc_g * s[g]|), acc_g exact integers.
    s (G, n) float64 holds the fp32 scales."""
    m, k = x.shape
    groups = s.shape[0]
    xs = (x.double() - 8).reshape(m, groups, k // groups)
    acc = torch.einsum("mgk,gkn->mgn", xs, w.double().reshape(groups, k // groups, -1))
    assert acc.abs().max() < 2**31
    terms = acc * s.unsqueeze(0)
    return terms.sum(dim=1), terms.abs().sum(dim=1)


def assert_fp32_close(y, real, mag, terms):
    """fp32 tolerance of ``terms`` rounded products added in order: each float(acc), each
    product and each addition rounds once (relative 2**-24 of the magnitude)."""
    assert y.dtype == torch.float32 and y.shape == real.shape
    err = (y.double() - real).abs()
    bound = (terms + 2) * U * mag + 1e-30
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"


@contextlib.contextmanager
def switches(force_exact=False, isa=2):
    """cpu_kernels' switches for a block: fast path on or off, the highest ISA path."""
    saved = ck.force_exact, ck.a8w4_isa
    ck.force_exact, ck.a8w4_isa = force_exact, isa
    try:
        yield
    finally:
        ck.force_exact, ck.a8w4_isa = saved


@pytest.fixture(autouse=True)
def _fast_paths_on():
    with switches():
        yield


def _scale_arg(s, kind):
    """fp32 (G, n) scale -> the argument form ``kind`` and the fp32 values it decodes to."""
    if kind == "int64":  # fp32 bit pattern in the low 32 bits (npu_trans_quant_param)
        words = quant.npu_trans_quant_param(s.reshape(-1), round_mode=1) & 0xFFFFFFFF
        return words.reshape(s.shape), quant.decode_quant_param(words).reshape(s.shape)
    if kind == "bf16":
        return s.bfloat16(), s.bfloat16().float()
    if kind == "vector" and s.shape[0] == 1:
        return s.reshape(-1), s
    return s, s


@given(m=st.integers(1, 64), group=st.sampled_from([32, 64, 128, 0]), gcount=st.integers(1, 4),
       nw=st.integers(1, 12), seed=SEEDS, extreme=st.booleans(),
       scale_kind=st.sampled_from(["fp32", "int64", "bf16", "vector"]),
       transposed=st.booleans(), isa=st.sampled_from(ISAS))
def test_kernel_matches_float64(m, group, gcount, nw, seed, extreme, scale_kind, transposed,
                                isa):
    # per-channel: any k % 4 == 0 (k % 8 == 0 to pack along k)
    k = group * gcount if group else (8 if transposed else 4) * (seed % 100 + 1)
    groups, n = (gcount if group else 1), 8 * nw
    make = extremes if extreme else ints
    x, w = make(seed, (m, k), -128, 127), make(seed + 1, (k, n), -8, 7)
    s = rand(seed + 2, (groups, n), 0.05, lo=1e-4)
    if transposed:  # transposed view of (n, k/8) packed along k
        weight = pack_int4(w.t().contiguous()).t()
    else:
        weight = pack_int4(w)
    s_arg, s_val = _scale_arg(s, scale_kind)
    with switches(isa=isa):
        y = ck.a8w4_mm(x, weight, s_arg)
    if transposed:  # not the schemes' layout: the op's plain path takes it
        assert y is None
        (y,) = mm.npu_grouped_matmul([x], [weight], scale=[s_arg], output_dtype=torch.float32)
    real, mag = model(x, w, s_val.double())
    assert_fp32_close(y, real, mag, groups)


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_extremes_all_rows(isa):
    """Every product at its extreme over whole groups (|acc| up to 136 * 8 * 128 per group),
    row tiles of 8 / 4 and their remainders, column blocks with tails."""
    for m, (k, n, groups) in zip((1, 7, 8, 13), ((128, 40, 1), (256, 72, 2), (384, 8, 3),
                                                (512, 96, 4))):
        for xv, wv in ((-128, -8), (-128, 7), (127, -8), (127, 7)):
            x, w = torch.full((m, k), xv, dtype=torch.int8), torch.full((k, n), wv,
                                                                      dtype=torch.int8)
            s = rand(m + k, (groups, n), 0.05, lo=1e-4)
            real, mag = model(x, w, s.double())
            with switches(isa=isa):
                y = ck.a8w4_mm(x, pack_int4(w), s)
            assert_fp32_close(y, real, mag, groups)


@given(m=st.integers(1, 20), gk=st.sampled_from([4, 8, 32, 64]), groups=st.integers(1, 3),
       nw=st.integers(1, 6), seed=SEEDS, with_bias=st.booleans(), with_pt=st.booleans(),
       out=st.sampled_from([torch.float32, torch.bfloat16]))
def test_a8w4_fast_equals_exact(m, gk, groups, nw, seed, with_bias, with_pt, out):
    """``npu_grouped_matmul`` A8W4 (list form) on the kernel vs its plain float64 path."""
    k, n = gk * groups, 8 * nw
    x, w = ints(seed, (m, k), -128, 127), ints(seed + 1, (k, n), -8, 7)
    s = rand(seed + 2, (groups, n), 0.05, lo=1e-4)
    s = s if groups > 1 else s.reshape(n)
    bias = rand(seed + 3, (n,), 50.0) if with_bias else None
    pt = rand(seed + 4, (m,), 2.0, lo=0.1) if with_pt else None
    kw = {"scale": [s], "bias": None if bias is None else [bias],
          "per_token_scale": None if pt is None else [pt], "output_dtype": out}
    before = ck.builds("a8w4_weights")
    (y,) = mm.npu_grouped_matmul([x], [pack_int4(w)], **kw)
    assert ck.builds("a8w4_weights") == before + 1  # the kernel ran
    with switches(force_exact=True):
        (ref,) = mm.npu_grouped_matmul([x], [pack_int4(w)], **kw)
    real, mag = model(x, w, s.double().reshape(groups, n))
    if bias is not None:
        real, mag = real + bias.double(), mag + bias.double().abs()
    if pt is not None:
        real, mag = real * pt.double()[:, None], mag * pt.double()[:, None]
    assert y.dtype == ref.dtype == out
    if out == torch.float32:
        assert_fp32_close(y, real, mag, groups + 2)
        assert_fp32_close(ref, real, mag, groups + 2)
    else:  # one bf16 rounding of nearly the same fp32 value: at most one bf16 step apart
        step = 2.0**-7 * ref.double().abs() + 1e-30
        assert bool(((y.double() - ref.double()).abs() <= step + 4 * 2**-24 * mag).all())


def test_moe_form_matches_plain_path():
    """The MoE form (stacked experts, some empty; int64 scales per group, bias, per-token
    scales) runs each expert on the kernel: same numbers as the plain path (fp32 tol)."""
    E, k, n, G = 4, 128, 48, 2
    counts = [3, 0, 6, 0]
    m = sum(counts) + 2  # rows past the total stay 0
    x, w = ints(1, (m, k), -128, 127), ints(2, (E, k, n), -8, 7)
    s = rand(3, (E, G, n), 0.05, lo=1e-4)
    words = quant.npu_trans_quant_param(s.reshape(-1), round_mode=1) & 0xFFFFFFFF
    s_val = quant.decode_quant_param(words).reshape(E, G, n)
    bias, pt = rand(4, (E, n), 20.0), rand(5, (m,), 2.0, lo=0.1)
    kw = {"scale": [words.reshape(E, G, n)], "bias": [bias], "per_token_scale": [pt],
          "group_list": torch.tensor(counts), "group_type": 0, "group_list_type": 1,
          "split_item": 2, "output_dtype": torch.float32}
    weight = pack_int4(w)
    before = ck.builds("a8w4_weights")
    (y,) = mm.npu_grouped_matmul([x], [weight], **kw)
    assert ck.builds("a8w4_weights") == before + 2  # two non-empty experts
    (y2,) = mm.npu_grouped_matmul([x], [weight], **kw)
    assert torch.equal(y, y2) and ck.builds("a8w4_weights") == before + 2  # cached per expert
    with switches(force_exact=True):
        (ref,) = mm.npu_grouped_matmul([x], [weight], **kw)
    lo = 0
    for e, c in enumerate(counts):
        if c:
            real, mag = model(x[lo:lo + c], w[e], s_val[e].double())
            p = pt[lo:lo + c].double()[:, None]
            real, mag = (real + bias[e].double()) * p, (mag + bias[e].double().abs()) * p
            assert_fp32_close(y[lo:lo + c], real, mag, G + 2)
            assert_fp32_close(ref[lo:lo + c], real, mag, G + 2)
        lo += c
    assert not y[lo:].any() and not ref[lo:].any()


def test_cache_reuse_and_invalidation():
    """The packed weight is built once per weight; a new scale tensor rebuilds only the scale
    table; in-place writes to the weight or the scale rebuild what they feed."""
    k, n, G = 128, 40, 4
    w = ints(1, (k, n), -8, 7)
    packed = pack_int4(w)
    s1, s2 = rand(2, (G, n), 0.05, lo=1e-4), rand(3, (G, n), 0.05, lo=1e-4)
    x = ints(4, (3, k), -128, 127)

    def check(scale):
        real, mag = model(x, mm._int_weight(packed, k, "w"), scale.double())
        assert_fp32_close(ck.a8w4_mm(x, packed, scale), real, mag, G)

    wb, pb = ck.builds("a8w4_weights"), ck.builds("a8w4_params")
    check(s1)
    check(s1)
    assert (ck.builds("a8w4_weights"), ck.builds("a8w4_params")) == (wb + 1, pb + 1)
    check(s2)
    assert (ck.builds("a8w4_weights"), ck.builds("a8w4_params")) == (wb + 1, pb + 2)
    s2.mul_(3.0)
    check(s2)
    assert (ck.builds("a8w4_weights"), ck.builds("a8w4_params")) == (wb + 1, pb + 3)
    packed.copy_(pack_int4(ints(5, (k, n), -8, 7)))
    check(s2)
    assert ck.builds("a8w4_weights") == wb + 2


def test_forms_left_to_the_plain_path():
    """Inputs the kernel does not take return None (the op then runs its float64 path or
    raises its own error)."""
    x, w = ints(1, (2, 24), -128, 127), pack_int4(ints(2, (24, 16), -8, 7))
    assert ck.a8w4_mm(x, w, torch.ones(4, 16)) is None  # groups of 6 rows (not 4 | size)
    assert ck.a8w4_mm(x, w, torch.ones(5, 16)) is None  # 5 does not divide k
    assert ck.a8w4_mm(x, w, torch.ones(1, 2, 16)) is None
    assert ck.a8w4_mm(x.float(), w, torch.ones(16)) is None
    assert ck.a8w4_mm(x[:, :16], w, torch.ones(16)) is None  # k mismatch
    assert ck.a8w4_mm(x, w, torch.ones(16)) is not None
    with switches(force_exact=True):
        assert ck.a8w4_mm(x, w, torch.ones(16)) is None
    # The small group still runs (plain path), with the reference's numbers.
    s = rand(3, (4, 16), 0.05, lo=1e-4)
    (y,) = mm.npu_grouped_matmul([x], [w], scale=[s], output_dtype=torch.float32)
    real, mag = model(x, mm._int_weight(w, 24, "w"), s.double())
    assert_fp32_close(y, real, mag, 4)
    with pytest.raises(ValueError, match="per-group scale"):
        mm.npu_grouped_matmul([x], [w], scale=[torch.ones(5, 16)], output_dtype=torch.float32)
    with pytest.raises(ValueError, match="weight"):
        mm.npu_grouped_matmul([x], [torch.ones(5, 3, dtype=torch.int32)], scale=[s],
                              output_dtype=torch.float32)


def test_native_ops_have_fake_kernels():
    k, n, group = 128, 40, 32
    values = ints(1, (k, n), -8, 7)
    torch.library.opcheck(torch.ops.vllm_ascend.a8w4_pack.default, (values, group))
    packed, colsum = torch.ops.vllm_ascend.a8w4_pack(values, group)
    s = rand(2, (k // group, n), 0.05, lo=1e-4)  # -> the block-major table (NB, G, 32)
    nb = -(-n // 32)
    table = torch.zeros(k // group, nb * 32)
    table[:, :n] = s
    table = table.reshape(k // group, nb, 32).transpose(0, 1).contiguous()
    x = ints(3, (5, k), -128, 127)
    for isa in ISAS:
        torch.library.opcheck(torch.ops.vllm_ascend.a8w4_matmul.default,
                              (x, packed, colsum, table, group, n, isa))
    torch.library.opcheck(torch.ops.vllm_ascend.a8w4_mm_cached.default,
                          (x, pack_int4(values), rand(4, (n,), 0.1), k, 2))
    torch.library.opcheck(torch.ops.vllm_ascend.a8w4_mm_cached.default,
                          (x, pack_int4(values), s, group, 2))


def test_compiled_matches_eager_one_graph():
    """Under torch.compile(fullgraph=True) the kernel is an opaque custom op with a symbolic
    row count: one graph for every token count, the eager numbers."""
    from vllm_ascend.device import ops

    ops.bind()
    k, n, G = 128, 48, 4  # (no size equal to a token count: duck sizing would tie them)
    w = pack_int4(ints(1, (k, n), -8, 7))
    s, bias = rand(2, (G, n), 0.05, lo=1e-4), rand(3, (n,), 20.0)

    def f(x, pt):
        (y,) = ops.npu_grouped_matmul([x], [w], scale=[s], bias=[bias], per_token_scale=[pt],
                                      output_dtype=torch.bfloat16)
        return y

    torch._dynamo.reset()
    try:
        counter = torch._dynamo.testing.CompileCounter()
        compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
        for m in (2, 3, 9):
            x, pt = ints(m, (m, k), -128, 127), rand(m + 1, (m,), 2.0, lo=0.1)
            assert torch.equal(compiled(x, pt), f(x, pt))
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()
