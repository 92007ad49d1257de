"""Fused norm / SwiGLU / grouped matmul + int8 quantisation (reference/fused.py and its csrc
fast paths, csrc/fused_quant.cpp), both held to an independent float64 oracle.

The oracle computes each op's math in float64 from the same inputs; quantised outputs must
have ``scale`` within fp32 rounding of the oracle's and every int8 value within half a step
(plus fp32 rounding) of ``v / scale``: one step apart from the oracle at most, and only where
the value lies on a rounding boundary.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend.device import ops
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import fused

NATIVE = ck.native_available()
PATHS = ["reference", "fast"] if NATIVE else ["reference"]
SETTINGS = settings(max_examples=25, deadline=None)


@contextlib.contextmanager
def path(name: str):
    saved = ck.force_exact
    ck.force_exact = name == "reference"
    try:
        yield
    finally:
        ck.force_exact = saved


def assert_dynamic_int8(y, scale, v64, computed=None):
    """y int8 (T, H), scale (T,) against the float64 values v64 (T, H) before quantisation."""
    s64 = v64.abs().amax(dim=-1) / 127
    s64 = torch.where(s64 > 0, s64, torch.ones_like(s64))
    if computed is not None:
        assert torch.all(y[~computed] == 0) and torch.all(scale[~computed] == 0)
        y, scale, v64, s64 = y[computed], scale[computed], v64[computed], s64[computed]
    torch.testing.assert_close(scale.double(), s64, rtol=2e-6, atol=0)
    err = (y.double() - v64 / s64[:, None]).abs()
    assert err.numel() == 0 or float(err.max()) <= 0.5 + 2e-3


def rms64(x64, gamma, eps):
    rstd = torch.rsqrt(x64.square().mean(dim=-1, keepdim=True) + eps)
    return x64 * rstd * gamma.double()


def silu64(v):
    return v / (1 + torch.exp(-v))


# --------------------------------------------------------- npu_add_rms_norm_dynamic_quant


@pytest.mark.parametrize("which", PATHS)
@SETTINGS
@given(rows=st.integers(1, 9), h=st.integers(1, 80), smooth=st.booleans(),
       beta=st.booleans(), seed=st.integers(0, 2**16))
def test_add_rms_norm_dynamic_quant_matches_float64(which, rows, h, smooth, beta, seed):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(rows, h, generator=g), torch.randn(rows, h, generator=g)
    gamma = torch.rand(h, generator=g) + 0.5
    b = torch.randn(h, generator=g) * 0.1 if beta else None
    s1 = torch.rand(h, generator=g) + 0.5 if smooth else None
    with path(which):
        y1, y2, x_out, sc1, sc2 = ops.npu_add_rms_norm_dynamic_quant(
            x1, x2, gamma, smooth_scale1=s1, beta=b, epsilon=1e-5)
    x64 = (x1 + x2).double()
    assert torch.equal(x_out, x1 + x2)
    v = rms64(x64, gamma, 1e-5) + (b.double() if beta else 0)
    v = v * (s1.double() if smooth else 1)
    assert_dynamic_int8(y1, sc1, v)
    assert y2.numel() == 0 and sc2.numel() == 0


@pytest.mark.parametrize("which", PATHS)
def test_add_rms_norm_dynamic_quant_bf16_and_two_outputs(which):
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(2, 3, 64, generator=g).bfloat16()
    x2 = torch.randn(2, 3, 64, generator=g).bfloat16()
    gamma = (torch.rand(64, generator=g) + 0.5).bfloat16()
    s1, s2 = torch.rand(64, generator=g) + 0.5, torch.rand(64, generator=g) + 0.5
    with path(which):
        y1, _, x_out, sc1, _ = ops.npu_add_rms_norm_dynamic_quant(x1, x2, gamma)
        z1, z2, _, t1, t2 = ops.npu_add_rms_norm_dynamic_quant(
            x1, x2, gamma, smooth_scale1=s1, smooth_scale2=s2)
    x_sum = (x1.float() + x2.float()).bfloat16()
    assert x_out.dtype == torch.bfloat16 and torch.equal(x_out, x_sum)
    n = rms64(x_sum.double(), gamma, 1e-6)
    assert y1.shape == (2, 3, 64) and sc1.shape == (2, 3)
    assert_dynamic_int8(y1.reshape(6, 64), sc1.reshape(6), n.reshape(6, 64))
    for y, s, sm in ((z1, t1, s1), (z2, t2, s2)):
        assert_dynamic_int8(y.reshape(6, 64), s.reshape(6), (n * sm.double()).reshape(6, 64))


def test_add_rms_norm_dynamic_quant_rejects_bad_arguments():
    x = torch.randn(2, 8)
    g = torch.ones(8)
    with pytest.raises(ValueError, match="output_mask"):
        ops.npu_add_rms_norm_dynamic_quant(x, x, g, output_mask=[False, False])
    with pytest.raises(ValueError, match="smooth_scale2"):
        ops.npu_add_rms_norm_dynamic_quant(x, x, g, smooth_scale2=g, output_mask=[True, False])
    with pytest.raises(ValueError, match="y_dtype"):
        ops.npu_add_rms_norm_dynamic_quant(x, x, g, y_dtype=torch.float16)


# ----------------------------------------------------------------- npu_add_rms_norm_quant


@pytest.mark.parametrize("which", PATHS)
@SETTINGS
@given(rows=st.integers(1, 6), h=st.integers(1, 64), div=st.booleans(), zp=st.booleans(),
       per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_add_rms_norm_quant_matches_float64(which, rows, h, div, zp, per_channel, seed):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(rows, h, generator=g), torch.randn(rows, h, generator=g)
    gamma = torch.rand(h, generator=g) + 0.5
    scales = torch.rand(h if per_channel else 1, generator=g) * 0.05 + 0.01
    scales = scales if div else 1 / scales
    zps = torch.randint(-3, 4, scales.shape, generator=g).float() if zp else None
    with path(which):
        y1, y2, x_sum = ops.npu_add_rms_norm_quant(x1, x2, gamma, scales, zps, div_mode=div)
    n = rms64((x1 + x2).double(), gamma, 1e-6)
    q = n / scales.double() if div else n * scales.double()
    q = q + (zps.double() if zp else 0)
    want = q.clamp(-128, 127)
    assert torch.equal(x_sum, x1 + x2) and y2.numel() == 0
    assert float((y1.double() - want).abs().max()) <= 0.5 + 1e-3


# ------------------------------------------------------------------------ npu_swiglu_quant


def _ends(counts):
    return torch.tensor(counts).cumsum(0)


@pytest.mark.parametrize("which", PATHS)
@SETTINGS
@given(counts=st.lists(st.integers(0, 4), min_size=1, max_size=4), extra=st.integers(0, 3),
       h=st.integers(1, 40), left=st.booleans(), counts_form=st.booleans(),
       smooth=st.booleans(), seed=st.integers(0, 2**16))
def test_swiglu_quant_dynamic_matches_float64(which, counts, extra, h, left, counts_form,
                                              smooth, seed):
    g = torch.Generator().manual_seed(seed)
    rows = sum(counts) + extra
    x = torch.randn(rows, 2 * h, generator=g) * 2
    table = torch.rand(len(counts), h, generator=g) + 0.5 if smooth else None
    gi = torch.tensor(counts) if counts_form else _ends(counts)
    with path(which):
        y, scale = ops.npu_swiglu_quant(x, smooth_scales=table, group_index=gi,
                                        activate_left=left, quant_mode=1,
                                        group_list_type=int(counts_form))
    a, b = x.double().chunk(2, dim=-1)
    v = silu64(a) * b if left else a * silu64(b)
    gid = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    computed = torch.arange(rows) < sum(counts)
    if smooth:
        v[:sum(counts)] *= table.double()[gid]
    assert_dynamic_int8(y, scale, v, computed)


@pytest.mark.parametrize("which", PATHS)
def test_swiglu_quant_without_groups_and_static(which):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 32, generator=g)
    with path(which):
        y, scale = ops.npu_swiglu_quant(x, quant_mode=1, activate_left=True)
        ys, empty = ops.npu_swiglu_quant(x, smooth_scales=torch.full((16,), 20.0),
                                         offsets=torch.ones(16), quant_mode=0)
    a, b = x.double().chunk(2, dim=-1)
    v = silu64(a) * b
    assert y.shape == (2, 3, 16) and scale.shape == (2, 3)
    assert_dynamic_int8(y.reshape(6, 16), scale.reshape(6), v.reshape(6, 16))
    want = (a * silu64(b) * 20 + 1).clamp(-128, 127)
    assert empty.numel() == 0 and float((ys.double() - want).abs().max()) <= 0.5 + 1e-3


@pytest.mark.parametrize("which", PATHS)
def test_swiglu_quant_rejects_bad_groups(which):
    x = torch.randn(4, 8)
    with path(which), pytest.raises(ValueError, match="group_index"):
        ops.npu_swiglu_quant(x, group_index=torch.tensor([3, 2]), quant_mode=1)
    with path(which), pytest.raises(ValueError, match="group_index"):
        ops.npu_swiglu_quant(x, group_index=torch.tensor([3, 2]), quant_mode=1,
                             group_list_type=1)
    with pytest.raises(ValueError, match="quant_mode"):
        ops.npu_swiglu_quant(x, quant_mode=2)


# ---------------------------------------------------------- npu_grouped_matmul_swiglu_quant


GMM_PATHS = PATHS if NATIVE and ck.onednn_available() else ["reference"]


@pytest.mark.parametrize("which", GMM_PATHS)
@SETTINGS
@given(counts=st.lists(st.integers(0, 5), min_size=1, max_size=4), extra=st.integers(0, 2),
       k=st.integers(1, 48), n2=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_grouped_matmul_swiglu_quant_matches_float64(which, counts, extra, k, n2, seed):
    g = torch.Generator().manual_seed(seed)
    e, rows, n = len(counts), sum(counts) + extra, 2 * n2
    if rows == 0:
        rows, extra = 1, 1
    x = torch.randint(-127, 128, (rows, k), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (e, k, n), dtype=torch.int8, generator=g)
    ws = torch.rand(e, n, generator=g) * 1e-3 + 1e-4
    xs = torch.rand(rows, generator=g) * 1e-2 + 1e-3
    ends = _ends(counts)
    with path(which):
        y, scale, offset = ops.npu_grouped_matmul_swiglu_quant(x, w, ends, ws, xs)
    gid = torch.repeat_interleave(torch.arange(e), torch.tensor(counts))
    m = sum(counts)
    c = torch.zeros(rows, n, dtype=torch.float64)
    c[:m] = torch.einsum("mk,mkn->mn", x[:m].double(), w[gid].double())
    c[:m] *= ws.double()[gid] * xs.double()[:m, None]
    v = silu64(c[:, :n2]) * c[:, n2:]
    assert y.shape == (rows, n2) and torch.all(offset == 0)
    assert_dynamic_int8(y, scale, v, torch.arange(rows) < m)


def test_grouped_matmul_swiglu_quant_rejects_bad_arguments():
    x = torch.zeros(3, 4, dtype=torch.int8)
    w = torch.zeros(2, 4, 6, dtype=torch.int8)
    ws, xs = torch.ones(2, 6), torch.ones(3)
    with pytest.raises(ValueError, match="group_list"):
        ops.npu_grouped_matmul_swiglu_quant(x, w, torch.tensor([2, 1]), ws, xs)
    with pytest.raises(ValueError, match="bias"):
        ops.npu_grouped_matmul_swiglu_quant(x, w, torch.tensor([1, 3]), ws, xs,
                                            bias=torch.zeros(2, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match="weight_scale"):
        ops.npu_grouped_matmul_swiglu_quant(x, w, torch.tensor([1, 3]), torch.ones(6), xs)


def test_row_groups_marks_rows_past_the_last_group():
    gid, computed = fused.row_groups(torch.tensor([2, 0, 1]), 5, False, "g")
    assert gid.tolist() == [0, 0, 2, 3, 3] and computed.tolist() == [True] * 3 + [False] * 2


# ----------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("which", PATHS)
def test_fused_ops_compile_once_for_every_row_count(which):
    torch._dynamo.reset()
    ops.bind()
    h, e = 16, 3
    g = torch.Generator().manual_seed(0)
    gamma = torch.rand(h, generator=g) + 0.5
    w = torch.randint(-127, 128, (e, h, 2 * h), dtype=torch.int8, generator=g)
    ws = torch.rand(e, 2 * h, generator=g) * 1e-3 + 1e-4

    def f(x1, x2, counts):
        y, _, x_sum, s, _ = ops.npu_add_rms_norm_dynamic_quant(x1, x2, gamma)
        a, sa = ops.npu_swiglu_quant(x_sum.repeat(1, 2), group_index=counts, quant_mode=1,
                                     group_list_type=1)
        q, sq, _ = ops.npu_grouped_matmul_swiglu_quant(y, w, counts.cumsum(0), ws, s)
        return y, s, a, sa, q, sq

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    with path(which):
        for rows in (2, 3, 7):
            x1, x2 = torch.randn(rows, h, generator=g), torch.randn(rows, h, generator=g)
            counts = torch.tensor([rows - 1, 0, 1])
            for got, want in zip(compiled(x1, x2, counts), f(x1, x2, counts)):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_dequant_swiglu_quant_with_groups_compiles_once():
    """The grouped ``npu_dequant_swiglu_quant`` reference has no data-dependent branch left
    (its group checks run in eager only): one fullgraph for every row count."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    ws = torch.rand(3, 16, generator=g) * 1e-2 + 1e-3

    def f(acc, xs, counts):
        return ops.npu_dequant_swiglu_quant(acc, weight_scale=ws, activation_scale=xs,
                                            group_index=counts, activate_left=True,
                                            quant_mode=1)

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    for rows in (2, 4, 9):
        acc = torch.randint(-5000, 5000, (rows, 16), dtype=torch.int32, generator=g)
        xs = torch.rand(rows, generator=g)
        counts = torch.tensor([1, 0, rows - 2])
        for got, want in zip(compiled(acc, xs, counts), f(acc, xs, counts)):
            assert torch.equal(got, want)
    assert counter.frame_count == 1
    torch._dynamo.reset()
