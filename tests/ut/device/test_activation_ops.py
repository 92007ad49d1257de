"""Activation, norm, rotary and prefetch reference ops against independent float64 oracles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference import activation as act


def f64(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2)
dtypes = st.sampled_from([torch.float32, torch.bfloat16])


# ------------------------------------------------------------------------------- SwiGLU


@given(shapes, st.integers(1, 5), st.integers(0, 99), st.booleans())
def test_swiglu(lead, h, seed, last):
    shape = [*lead, 2 * h] if last else [2 * h, *lead]
    dim = -1 if last else 0
    x = torch.randn(shape, generator=seeded(seed)) * 3
    out = act.npu_swiglu(x, dim=dim)
    xd = x.double().movedim(dim, -1)
    a, b = xd[..., :h], xd[..., h:]
    want = (a / (1 + torch.exp(-a)) * b).movedim(-1, dim)
    assert out.dtype == x.dtype and out.shape == want.shape
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-6)


def test_swiglu_odd_dim_rejected():
    with pytest.raises(ValueError, match="even"):
        act.npu_swiglu(torch.zeros(2, 3))


def dsq_oracle(x, bias, weight_scale, activation_scale, quant_scale, counts, activate_left):
    """float64 loops: rows of the listed groups, then per-row dynamic int8 (scale, values)."""
    t, two_h = x.shape
    h = two_h // 2
    if counts is None:
        group_of = [0] * t
    else:
        group_of = [g for g, c in enumerate(counts) for _ in range(c)]
    rows = []
    for r in range(len(group_of)):
        g = group_of[r]
        v = []
        for c in range(two_h):
            acc = float(x[r, c]) + (float(bias[c]) if bias is not None else 0.0)
            ws = float(weight_scale[g if weight_scale.shape[0] > 1 else 0, c])
            v.append(acc * ws * float(activation_scale[r]))
        first, second = v[:h], v[h:]
        if activate_left:
            a = [silu(first[c]) * second[c] for c in range(h)]
        else:
            a = [silu(second[c]) * first[c] for c in range(h)]
        if quant_scale is not None:
            qg = g if quant_scale.shape[0] > 1 else 0
            a = [a[c] * float(quant_scale[qg, c]) for c in range(h)]
        rows.append(a)
    return rows


@st.composite
def dsq_case(draw):
    t, h = draw(st.integers(0, 6)), draw(st.integers(1, 4))
    g = seeded(draw(st.integers(0, 99)))
    grouped = draw(st.booleans())
    counts = None
    if grouped:
        ng = draw(st.integers(1, 4))
        counts = draw(
            st.lists(st.integers(0, 3), min_size=ng, max_size=ng).filter(lambda c: sum(c) <= t)
        )
    ng = len(counts) if counts else 1
    return dict(
        x=torch.randint(-2000, 2000, (t, 2 * h), generator=g, dtype=torch.int32),
        bias=(torch.randint(-50, 50, (2 * h,), generator=g, dtype=torch.int32)
              if draw(st.booleans()) else None),
        weight_scale=torch.rand(ng, 2 * h, generator=g) * 0.01 + 1e-3,
        activation_scale=torch.rand(t, generator=g) * 0.05 + 1e-3,
        quant_scale=torch.rand(ng, h, generator=g) + 0.5 if draw(st.booleans()) else None,
        counts=counts,
        activate_left=draw(st.booleans()),
    )


@given(dsq_case())
def test_dequant_swiglu_quant(c):
    y, scale = act.npu_dequant_swiglu_quant(
        c["x"], weight_scale=c["weight_scale"], activation_scale=c["activation_scale"],
        bias=c["bias"], quant_scale=c["quant_scale"],
        group_index=None if c["counts"] is None else torch.tensor(c["counts"], dtype=torch.int64),
        activate_left=c["activate_left"], quant_mode=1,
    )
    rows = dsq_oracle(c["x"], c["bias"], c["weight_scale"], c["activation_scale"], c["quant_scale"],
                      c["counts"], c["activate_left"])
    t, h = c["x"].shape[0], c["x"].shape[1] // 2
    assert y.dtype == torch.int8 and scale.dtype == torch.float32
    assert y.shape == (t, h) and scale.shape == (t,)
    for r, a in enumerate(rows):
        amax = max(abs(v) for v in a)
        want_scale = amax / 127 if amax > 0 else 1.0
        assert math.isclose(float(scale[r]), want_scale, rel_tol=1e-5)
        q = [round(v / want_scale) for v in a]
        assert max(abs(int(y[r, i]) - q[i]) for i in range(h)) <= 1
    # rows past the group total are not computed
    assert not y[len(rows):].any() and not scale[len(rows):].any()


def test_dequant_swiglu_quant_activate_left_convention():
    """Default activate_left=False: silu(second half) * first half."""
    x = torch.tensor([[3, -2]], dtype=torch.int32)
    ws = torch.ones(1, 2)
    a_s = torch.ones(1)
    _, s_right = act.npu_dequant_swiglu_quant(
        x, weight_scale=ws, activation_scale=a_s, quant_mode=1
    )
    _, s_left = act.npu_dequant_swiglu_quant(
        x, weight_scale=ws, activation_scale=a_s, activate_left=True, quant_mode=1
    )
    assert math.isclose(float(s_right[0]), abs(silu(-2.0) * 3.0) / 127, rel_tol=1e-6)
    assert math.isclose(float(s_left[0]), abs(silu(3.0) * -2.0) / 127, rel_tol=1e-6)


@pytest.mark.parametrize("dst_type", [None, torch.int8, torch.qint8, 1, 12])
def test_dequant_swiglu_quant_dst_type_accepts_dtype_or_code(dst_type):
    x = torch.tensor([[0, 0], [4, 5]], dtype=torch.int32)
    y, scale = act.npu_dequant_swiglu_quant(x, quant_mode=1, dst_type=dst_type)
    assert y.dtype == torch.int8
    assert y[0].tolist() == [0] and float(scale[0]) == 1.0  # all-zero row: scale 1, no NaN
    assert y[1].tolist() == [127]


# -------------------------------------------------------------------------------- norms


def rms_oracle(x: torch.Tensor, gamma: torch.Tensor, eps: float, beta=None):
    """float64 loops over rows: (y, rstd)."""
    xs = x.double().reshape(-1, x.shape[-1])
    ys, rstds = [], []
    for row in xs.tolist():
        rstd = 1.0 / math.sqrt(sum(v * v for v in row) / len(row) + eps)
        y = [v * rstd * float(gmm) for v, gmm in zip(row, gamma.double().tolist())]
        if beta is not None:
            y = [v + float(b) for v, b in zip(y, beta.double().tolist())]
        ys.append(y)
        rstds.append(rstd)
    return f64(ys).reshape(x.shape), f64(rstds).reshape(*x.shape[:-1], 1)


@given(shapes, st.integers(1, 8), st.integers(0, 99), st.sampled_from([1e-6, 1e-5, 0.1]))
def test_rms_norm_float32(lead, h, seed, eps):
    g = seeded(seed)
    x, gamma = torch.randn(*lead, h, generator=g), torch.randn(h, generator=g)
    y, rstd = act.npu_rms_norm(x, gamma, eps)
    y_ref, rstd_ref = rms_oracle(x, gamma, eps)
    assert y.dtype == torch.float32 and rstd.dtype == torch.float32 and rstd.shape == rstd_ref.shape
    assert torch.allclose(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(rstd.double(), rstd_ref, rtol=1e-5)


@given(shapes, st.integers(1, 8), st.integers(0, 99))
def test_rms_norm_bfloat16(lead, h, seed):
    g = seeded(seed)
    x, gamma = torch.randn(*lead, h, generator=g).bfloat16(), torch.randn(h, generator=g).bfloat16()
    y, rstd = act.npu_rms_norm(x, gamma)
    y_ref, rstd_ref = rms_oracle(x, gamma, 1e-6)
    assert y.dtype == torch.bfloat16 and rstd.dtype == torch.float32
    assert torch.allclose(rstd.double(), rstd_ref, rtol=1e-5)
    assert torch.allclose(y.double(), y_ref, rtol=2**-7, atol=1e-6)  # one bf16 rounding


@given(shapes, st.integers(1, 8), st.integers(0, 99), dtypes)
def test_add_rms_norm(lead, h, seed, dtype):
    g = seeded(seed)
    x1, x2 = (torch.randn(*lead, h, generator=g).to(dtype) for _ in range(2))
    gamma = torch.randn(h, generator=g).to(dtype)
    y, rstd, x_sum = act.npu_add_rms_norm(x1, x2, gamma, 1e-6)
    sum_ref = (x1.double() + x2.double()).to(dtype)  # exact sum, one rounding to the input dtype
    assert x_sum.dtype == dtype and torch.equal(x_sum, sum_ref)
    y_ref, rstd_ref = rms_oracle(sum_ref, gamma, 1e-6)  # the norm sees the rounded sum
    assert torch.allclose(rstd.double(), rstd_ref, rtol=1e-5)
    tol = 2**-7 if dtype == torch.bfloat16 else 1e-5
    assert y.dtype == dtype and torch.allclose(y.double(), y_ref, rtol=tol, atol=1e-6)


def test_add_rms_norm_bfloat16_normalises_the_rounded_sum():
    x1 = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    x2 = torch.tensor([[2**-9, 0.0]], dtype=torch.bfloat16)  # 1 + 2^-9 rounds to 1 in bf16
    _, rstd, x_sum = act.npu_add_rms_norm(x1, x2, torch.ones(2, dtype=torch.bfloat16))
    assert x_sum.tolist() == [[1.0, 1.0]]
    assert math.isclose(float(rstd), 1 / math.sqrt(1 + 1e-6), rel_tol=1e-7)


@given(shapes, st.integers(1, 8), st.integers(0, 99), st.booleans(), st.booleans(), st.booleans(),
       dtypes)
def test_add_rms_norm_quant(lead, h, seed, div_mode, with_beta, second, dtype):
    g = seeded(seed)
    x1, x2 = (torch.randn(*lead, h, generator=g).to(dtype) for _ in range(2))
    gamma = torch.randn(h, generator=g).to(dtype)
    beta = torch.randn(h, generator=g).to(dtype) if with_beta else None
    scales = (torch.rand(h, generator=g) * 0.05 + 0.01).to(dtype)
    if not div_mode:
        scales = scales.reciprocal()
    zp = torch.randint(-5, 5, (h,), generator=g).to(dtype)
    y1, y2, x_sum = act.npu_add_rms_norm_quant(
        x1, x2, gamma, scales, zp, beta, scales if second else None, None,
        epsilon=1e-6, div_mode=div_mode,
    )
    sum_ref = (x1.double() + x2.double()).to(dtype)
    assert torch.equal(x_sum, sum_ref)
    normed, _ = rms_oracle(sum_ref, gamma, 1e-6, beta)
    s = scales.double()
    q = (normed / s if div_mode else normed * s) + zp.double()
    want = torch.round(q).clamp(-128, 127)
    assert y1.dtype == torch.int8 and y1.shape == x1.shape
    assert (y1.double() - want).abs().max() <= 1
    if second:
        want2 = torch.round(normed / s if div_mode else normed * s).clamp(-128, 127)
        assert (y2.double() - want2).abs().max() <= 1
    else:
        assert y2.numel() == 0


def test_rms_norm_mismatched_gamma_rejected():
    with pytest.raises(ValueError, match="gamma"):
        act.npu_rms_norm(torch.zeros(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match="x1"):
        act.npu_add_rms_norm(torch.zeros(2, 4), torch.zeros(3, 4), torch.ones(4))
    with pytest.raises(ValueError, match="dst_type"):
        act.npu_add_rms_norm_quant(torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(4),
                                   torch.ones(4), None, dst_type=5)
    with pytest.raises(ValueError, match="axis"):
        act.npu_add_rms_norm_quant(torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(4),
                                   torch.ones(4), None, axis=0)


# ------------------------------------------------------------------------------- rotary


def rotate_oracle(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, mode: str) -> torch.Tensor:
    """float64 loops over the last dim."""
    x, r1, r2 = torch.broadcast_tensors(x.double(), r1.double(), r2.double())
    d = x.shape[-1]
    rows, c, s = x.reshape(-1, d).tolist(), r1.reshape(-1, d).tolist(), r2.reshape(-1, d).tolist()
    out = []
    for v, cc, ss in zip(rows, c, s):
        if mode == "half":
            rot = [-v[i + d // 2] if i < d // 2 else v[i - d // 2] for i in range(d)]
        else:
            rot = [-v[i + 1] if i % 2 == 0 else v[i - 1] for i in range(d)]
        out.append([v[i] * cc[i] + rot[i] * ss[i] for i in range(d)])
    return f64(out).reshape(x.shape)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from(["half", "interleave"]), st.integers(0, 99))
def test_rotary_mul(b, s, n, half_d, mode, seed):
    g = seeded(seed)
    x = torch.randn(b, s, n, 2 * half_d, generator=g)
    angle = torch.rand(1, s, 1, 2 * half_d, generator=g) * 6
    out = act.npu_rotary_mul(x, angle.cos(), angle.sin(), rotary_mode=mode)
    want = rotate_oracle(x, angle.cos(), angle.sin(), mode)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-6)


@given(*[st.integers(1, 3)] * 4, st.integers(1, 4), st.sampled_from(["half", "interleave"]),
       st.integers(0, 99))
def test_apply_rotary_pos_emb_in_place(b, s, nq, nk, half_d, mode, seed):
    g = seeded(seed)
    q = torch.randn(b, s, nq, 2 * half_d, generator=g)
    k = torch.randn(b, s, nk, 2 * half_d, generator=g)
    angle = torch.rand(b, s, 1, 2 * half_d, generator=g) * 6
    want_q = rotate_oracle(q, angle.cos(), angle.sin(), mode)
    want_k = rotate_oracle(k, angle.cos(), angle.sin(), mode)
    q_out, k_out = act.npu_apply_rotary_pos_emb(q, k, angle.cos(), angle.sin(), "BSND", mode)
    assert q_out is q and k_out is k
    assert torch.allclose(q.double(), want_q, rtol=1e-5, atol=1e-6)
    assert torch.allclose(k.double(), want_k, rtol=1e-5, atol=1e-6)


def test_rotary_bad_input():
    x = torch.zeros(1, 1, 1, 4)
    with pytest.raises(ValueError, match="rotary_mode=.*'half', 'interleave'"):
        act.npu_rotary_mul(x, x, x, rotary_mode="quarter")
    with pytest.raises(ValueError, match="r1"):
        act.npu_rotary_mul(x, torch.zeros(2), x)
    with pytest.raises(ValueError, match="layout"):
        act.npu_apply_rotary_pos_emb(x, x.clone(), x, x, layout="BNSD")
    with pytest.raises(ValueError, match="query"):
        act.npu_apply_rotary_pos_emb(x[0], x.clone(), x, x)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quant_mode=0), "quant_mode"),
        (dict(quant_mode=1, swiglu_mode=1), "swiglu_mode"),
        (dict(quant_mode=1, quant_offset=torch.zeros(2)), "quant_offset"),
        (dict(quant_mode=1, dst_type=torch.float16), "dst_type"),
        (dict(quant_mode=1, dst_type=99), "dst_type"),
        (dict(quant_mode=1, group_index=torch.tensor([5])), "group_index"),
        (dict(quant_mode=1, weight_scale=torch.ones(2, 4)), "weight_scale"),
        (dict(quant_mode=1, round_mode=4), "round_mode"),
        (dict(quant_mode=1, activation_scale=torch.ones(2)), "activation_scale"),
        (dict(quant_mode=1, quant_scale=torch.ones(3)), "quant_scale"),
    ],
)
def test_dequant_swiglu_quant_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        act.npu_dequant_swiglu_quant(torch.zeros(3, 4, dtype=torch.int32), **kwargs)


# ------------------------------------------------------------------------------ prefetch


def test_prefetch_validates_and_does_nothing():
    t = torch.zeros(4)  # 16 bytes
    assert act.npu_prefetch(t, None, 16) is None
    assert act.npu_prefetch(t, t, 1, offset=15) is None
    with pytest.raises(ValueError, match="max_size"):
        act.npu_prefetch(t, None, 0)
    with pytest.raises(ValueError, match="offset"):
        act.npu_prefetch(t, None, 8, offset=16)
    with pytest.raises(ValueError, match="offset"):
        act.npu_prefetch(t, None, 8, offset=-1)
