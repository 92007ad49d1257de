"""The norm and rotary C++ ops (``device/reference/norm_rope_fast.py``, csrc/norm_rope.cpp)
against the reference's plain PyTorch path (every fast path off) and float64 math."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.device.exact import plain
from vllm_ascend.device.reference import activation as act
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import norm_rope_fast

pytestmark = pytest.mark.skipif(not ck.native_available(), reason="vllm_ascend._C not built")

SEEDS = st.integers(0, 2**31 - 1)
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


def rms64(x: torch.Tensor, gamma: torch.Tensor, eps: float):
    xd = x.double()
    rstd = torch.rsqrt(xd.square().mean(-1, keepdim=True) + eps)
    return xd * rstd * gamma.double(), rstd


def close_to_rounding(got: torch.Tensor, want64: torch.Tensor, scale: torch.Tensor) -> None:
    """|got - want| within fp32 rounding of the magnitude, plus one rounding of got's dtype
    (relative, or its smallest subnormal step near 0)."""
    step = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[got.dtype]
    tiny = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
    bound = (1e-5 + step) * scale + tiny[got.dtype]
    assert bool(((got.double() - want64).abs() <= bound).all()), \
        float(((got.double() - want64).abs() / bound).max())


@settings(max_examples=80)
@given(seed=SEEDS, lead=st.lists(st.integers(0, 5), min_size=1, max_size=3),
       h=st.integers(1, 300), dtype=DTYPES, gamma_f32=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-5, 0.1]))
def test_rms_norm_matches_reference_and_float64(seed, lead, h, dtype, gamma_f32, eps):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*lead, h, generator=g) * 3).to(dtype)
    gamma = torch.randn(h, generator=g).to(torch.float32 if gamma_f32 else dtype)
    y, rstd = act.npu_rms_norm(x, gamma, eps)
    py, prstd = plain(act.npu_rms_norm, x, gamma, eps)
    assert (y.dtype, y.shape, rstd.dtype, rstd.shape) == (py.dtype, py.shape, prstd.dtype,
                                                         prstd.shape)
    want, rstd64 = rms64(x, gamma, eps)
    close_to_rounding(rstd, rstd64, rstd64)
    close_to_rounding(y, want, (x.double() * rstd64 * gamma.double()).abs())


@settings(max_examples=60)
@given(seed=SEEDS, n=st.integers(0, 9), h=st.integers(1, 300), dtype=DTYPES)
def test_add_rms_norm_sum_is_bit_identical_and_norm_matches(seed, n, h, dtype):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = (torch.randn(n, h, generator=g).to(dtype) for _ in range(2))
    gamma = torch.randn(h, generator=g)
    y, rstd, x_sum = act.npu_add_rms_norm(x1, x2, gamma, 1e-6)
    py, prstd, px_sum = plain(act.npu_add_rms_norm, x1, x2, gamma, 1e-6)
    torch.testing.assert_close(x_sum, px_sum, rtol=0, atol=0)
    assert rstd.shape == prstd.shape == (n, 1) and y.dtype == py.dtype == dtype
    want, rstd64 = rms64(x_sum, gamma, 1e-6)  # normed from the rounded sum, as the reference
    close_to_rounding(y, want, (x_sum.double() * rstd64 * gamma.double()).abs())


def test_norm_fast_path_declines_what_it_does_not_cover():
    x = torch.randn(4, 8)
    assert norm_rope_fast.rms_norm(x, torch.randn(2, 4), 1e-6) is None  # 2-D gamma
    assert norm_rope_fast.rms_norm(x.double(), torch.randn(8), 1e-6) is None  # float64
    assert norm_rope_fast.add_rms_norm(x, x.bfloat16(), torch.randn(8), 1e-6) is None
    with pytest.raises(ValueError, match="gamma shape"):  # the plain path's error
        act.npu_rms_norm(x, torch.randn(7), 1e-6)


def rot64(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, mode: str) -> torch.Tensor:
    xd = x.double()
    if mode == "half":
        a, b = xd.chunk(2, dim=-1)
        rot = torch.cat((-b, a), dim=-1)
    else:
        rot = torch.stack((-xd[..., 1::2], xd[..., 0::2]), dim=-1).flatten(-2)
    return xd * r1.double() + rot * r2.double()


@settings(max_examples=80)
@given(seed=SEEDS, t=st.integers(0, 6), heads=st.integers(1, 5), half=st.integers(1, 40),
       extra=st.integers(0, 8), mode=st.sampled_from(["half", "interleave"]), dtype=DTYPES,
       shared=st.booleans(), r_dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_rotary_mul_is_bit_identical_to_the_reference(seed, t, heads, half, extra, mode, dtype,
                                                      shared, r_dtype):
    g = torch.Generator().manual_seed(seed)
    d = 2 * half
    x = torch.randn(t, heads, d + extra, generator=g).to(dtype)[..., :d]  # a head slice
    rows = 1 if shared else t
    r1, r2 = (torch.randn(rows, 1, d, generator=g).to(r_dtype) for _ in range(2))
    got = act.npu_rotary_mul(x, r1, r2, mode)
    want = plain(act.npu_rotary_mul, x, r1, r2, mode)
    assert got.dtype == want.dtype and got.shape == want.shape == (t, heads, d)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    bound = float(1e-6 * (x.double().abs() * (r1.double().abs() + r2.double().abs())).amax()) \
        if dtype == torch.float32 and t else 1.0
    err = (got.double() - rot64(x, r1, r2, mode)).abs()
    assert not err.numel() or float(err.max()) <= bound


def test_rotary_fast_path_declines_4d_and_mixed_tables():
    x = torch.randn(2, 3, 4, 8)
    assert norm_rope_fast.rotary_mul(x, torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8),
                                     "half") is None
    x3 = torch.randn(2, 3, 8)
    assert norm_rope_fast.rotary_mul(x3, torch.randn(2, 1, 8), torch.randn(2, 1, 8).double(),
                                     "half") is None
    assert norm_rope_fast.rotary_mul(x3, torch.randn(2, 1, 8), torch.randn(2, 1, 8),
                                     "spiral") is None


def test_compiled_graph_keeps_the_plain_norm():
    """While dynamo traces, the fast paths step aside: the graph holds the plain ops."""
    import torch._dynamo

    seen = []

    def backend(gm, _inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes)
        return gm

    fn = torch.compile(lambda x, w: act.npu_rms_norm(x, w, 1e-6)[0], backend=backend,
                       fullgraph=True)
    torch._dynamo.reset()
    fn(torch.randn(3, 16), torch.randn(16))
    assert seen and not any("vllm_ascend" in s for s in seen)
