"""The reference ops' fast CPU paths (cpu_kernels.py) give the plain path's results.

Each test runs an op twice, on its fast path and with ``cpu_kernels.force_exact`` (the
plain PyTorch math), and compares: integer and requantised outputs and everything of
``npu_quant_matmul`` / ``npu_dynamic_quant`` bit for bit; ``npu_weight_quant_batchmatmul``
within fp32 tolerance (same W, fp32 sums in another order). No timing here: see
bench/quant_gemm.py.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import matmul as mm
from vllm_ascend.device.reference import quant
from vllm_ascend.device.reference._common import pack_int4

SEEDS = st.integers(0, 2**31 - 1)

needs_native = pytest.mark.skipif(not ck.native_available(),
                                  reason="vllm_ascend._C (csrc/) is not built here")
needs_onednn = pytest.mark.skipif(not ck.onednn_available(),
                                  reason="no exact oneDNN int8 GEMM (vLLM CPU ops / VNNI)")
#: int8_mm's backends live here: vLLM's oneDNN (when exact) and csrc's i8_matmul.
INT8_BACKENDS = [b for b, ok in (("onednn", ck.onednn_available()),
                                 ("native", ck.native_available())) if ok]
needs_int8 = pytest.mark.skipif(not INT8_BACKENDS, reason="no int8 GEMM backend here")
_BUILDS = {"onednn": "onednn_weights", "native": "i8_weights"}


class _int8_backend:
    """Context: int8_mm on oneDNN or on csrc's i8_matmul."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        self.saved, ck.prefer_onednn = ck.prefer_onednn, self.name == "onednn"
        return _BUILDS[self.name]

    def __exit__(self, *exc):
        ck.prefer_onednn = self.saved


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ints(seed, shape, lo=-128, hi=127, dtype=torch.int8):
    return torch.randint(lo, hi + 1, shape, generator=gen(seed), dtype=dtype)


def rand(seed, shape, amp=1.0, lo=None):
    u = torch.rand(shape, generator=gen(seed), dtype=torch.float64)
    low = -amp if lo is None else lo
    return (low + u * (amp - low)).float()


def exact(fn, *args, **kwargs):
    """fn on the plain PyTorch path."""
    saved = ck.force_exact
    ck.force_exact = True
    try:
        return fn(*args, **kwargs)
    finally:
        ck.force_exact = saved


def fast(fn, *args, **kwargs):
    """fn with the fast paths on (whatever the environment says)."""
    saved = ck.force_exact
    ck.force_exact = False
    try:
        return fn(*args, **kwargs)
    finally:
        ck.force_exact = saved


class _isa:
    """Context: wq_matmul's AVX-512 path (where the CPU has it) or its AVX2 path."""

    def __init__(self, wide: bool) -> None:
        self.wide = wide and bool(torch.cpu._is_avx512_supported())

    def __enter__(self):
        self.saved, ck.use_avx512 = ck.use_avx512, self.wide

    def __exit__(self, *exc):
        ck.use_avx512 = self.saved


@pytest.fixture(params=[True, False], ids=["avx512", "avx2"])
def isa(request, monkeypatch):
    """wq_matmul's AVX-512 path (where the CPU has it) and its AVX2 path."""
    if request.param and not torch.cpu._is_avx512_supported():
        pytest.skip("no AVX-512 here")
    monkeypatch.setattr(ck, "use_avx512", request.param)
    return request.param


# ---------------------------------------------------------------- npu_quant_matmul (oneDNN)


@needs_int8
@given(m=st.integers(1, 64), k=st.integers(1, 160), n=st.integers(1, 48), seed=SEEDS,
       batch=st.booleans(), layout=st.sampled_from(["kn", "nk_t", "nz"]),
       scale_kind=st.sampled_from(["channel", "tensor", "bf16", "int64"]),
       pertoken=st.booleans(), bias_kind=st.sampled_from([None, "float", "int32"]),
       out=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, None, torch.int32]),
       backend=st.sampled_from(INT8_BACKENDS or ["none"]))
def test_quant_matmul_fast_equals_exact(m, k, n, seed, batch, layout, scale_kind, pertoken,
                                        bias_kind, out, backend):
    k = 8 * k - (seed % 2)  # odd K too (i8_matmul pairs rows of K)
    w = ints(seed, (n, k))
    x2 = {"kn": w.t().contiguous(), "nk_t": w.t(),
          "nz": quant.npu_format_cast(w.t().contiguous(), 29)}[layout]
    x1 = ints(seed + 1, (2, m, k) if batch else (m, k))
    if scale_kind == "int64":
        scale = quant.npu_trans_quant_param(rand(seed + 2, (n,), 0.02, lo=1e-4))
    else:
        scale = rand(seed + 2, (1,) if scale_kind == "tensor" else (n,), 0.02, lo=1e-4)
        scale = scale.bfloat16() if scale_kind == "bf16" else scale
    kw = {"output_dtype": out}
    if out == torch.int32:
        kw["bias"] = ints(seed + 3, (n,), -10**6, 10**6, torch.int32) if bias_kind else None
    else:
        if pertoken:
            kw["pertoken_scale"] = rand(seed + 4, x1.shape[:-1], 2.0, lo=0.01)
        if bias_kind == "float":
            kw["bias"] = rand(seed + 3, (n,), 3.0)
        elif bias_kind == "int32":
            kw["bias"] = ints(seed + 3, (n,), -10**5, 10**5, torch.int32)
    with _int8_backend(backend) as builds:
        before = ck.builds(builds)
        y = fast(mm.npu_quant_matmul, x1, x2, scale, **kw)
        assert ck.builds(builds) == before + 1  # the fast path ran (a new weight)
    ref = exact(mm.npu_quant_matmul, x1, x2, scale, **kw)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert torch.equal(y, ref)


@needs_int8
@pytest.mark.parametrize("backend", INT8_BACKENDS)
@pytest.mark.parametrize("k", [1023, 1024, 2046, 2047, 4096])
def test_quant_matmul_large_k_keeps_exact_integers(k, backend):
    """Beyond fp32's 24 bits (K chunks of 1023 summed in float64): int32 outputs stay exact,
    float outputs equal the plain path's rounding of the exact accumulator."""
    a = torch.full((3, k), 127, dtype=torch.int8)
    a[1] = -128
    b = torch.full((k, 5), -128, dtype=torch.int8)
    b[0, 1] = 127
    b[-1, 2] = 3
    expected = a.long() @ b.long()
    bias = torch.arange(5, dtype=torch.int32) * 1000
    with _int8_backend(backend) as builds:
        before = ck.builds(builds)
        y = fast(mm.npu_quant_matmul, a, b, torch.ones(1), output_dtype=torch.int32)
        assert ck.builds(builds) == before + 1
        assert torch.equal(y.long(), expected)
        for kw in ({"output_dtype": torch.float32},
                   {"output_dtype": torch.float32, "bias": bias},
                   {"output_dtype": torch.bfloat16, "pertoken_scale": torch.rand(3)}):
            assert torch.equal(fast(mm.npu_quant_matmul, a, b, torch.tensor([0.5]), **kw),
                               exact(mm.npu_quant_matmul, a, b, torch.tensor([0.5]), **kw))


@needs_onednn
def test_onednn_handle_cached_per_weight_not_per_scale():
    """One prepacked handle per weight; a new scale tensor needs none (unit scales are
    baked in, the op scales the exact accumulators); an in-place write rebuilds it."""
    w = quant.npu_format_cast(ints(1, (96, 64)).t().contiguous(), 29)  # (k=64, n=96)
    x = ints(2, (4, 64))
    s1, s2 = rand(3, (96,), 0.1, lo=0.01), rand(4, (96,), 0.1, lo=0.01)
    before = ck.builds("onednn_weights")
    y1 = fast(mm.npu_quant_matmul, x, w, s1, output_dtype=torch.float32)
    y1b = fast(mm.npu_quant_matmul, x, w, s1, output_dtype=torch.float32)
    y2 = fast(mm.npu_quant_matmul, x, w, s2, output_dtype=torch.float32)
    assert ck.builds("onednn_weights") == before + 1
    assert torch.equal(y1, y1b)
    assert torch.equal(y2, exact(mm.npu_quant_matmul, x, w, s2, output_dtype=torch.float32))
    with torch.no_grad():
        w[0].neg_()  # in place: the version counter moves, the handle is rebuilt
    y3 = fast(mm.npu_quant_matmul, x, w, s1, output_dtype=torch.float32)
    assert ck.builds("onednn_weights") == before + 2
    assert torch.equal(y3, exact(mm.npu_quant_matmul, x, w, s1, output_dtype=torch.float32))
    assert quant.get_npu_format(w) == 29


def test_quant_matmul_without_kernels_uses_plain_path(monkeypatch):
    """No vLLM CPU ops (e.g. vLLM absent) and no csrc build: int8_mm is None and the op
    still answers; with only csrc, its i8_matmul serves."""
    a, b = ints(1, (3, 40)), ints(2, (40, 7))
    monkeypatch.setattr(ck, "onednn_available", lambda: False)
    if ck.native_available():
        before = ck.builds("i8_weights")
        assert torch.equal(fast(ck.int8_mm, a, b).long(), a.long() @ b.long())
        assert ck.builds("i8_weights") == before + 1
    monkeypatch.setattr(ck, "native_available", lambda: False)
    assert ck.int8_mm(a, b) is None
    y = mm.npu_quant_matmul(a, b, torch.ones(1), output_dtype=torch.int32)
    assert torch.equal(y.long(), a.long() @ b.long())


# ---------------------------------------------------------------- npu_weight_quant_batchmatmul


def _close(y, ref, mag, dtype):
    """fp32 tolerance against the plain path (relative to sum |x||W|); one rounding step of
    a 16-bit output dtype more when that is the output."""
    err = (y.double() - ref.double()).abs()
    tol = 2e-6 * mag + 1e-30
    if dtype != torch.float32:
        tol = tol + ref.double().abs() * 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    assert bool((err <= tol).all()), (err - tol).max()


@needs_native
@given(m=st.integers(1, 40), kw=st.integers(1, 24), nw=st.integers(1, 8), seed=SEEDS,
       data=st.data(), layout=st.sampled_from(["int8", "int8_t", "int8_nz", "int4", "int4_t"]),
       gran=st.sampled_from(["tensor", "channel", "channel2d", "group"]),
       with_offset=st.booleans(), with_bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), wide=st.booleans())
def test_weight_quant_batchmatmul_fast_matches_exact(m, kw, nw, seed, data, layout, gran,
                                                     with_offset, with_bias, dtype, wide):
    k, n = 8 * kw, 8 * nw
    int4 = layout.startswith("int4")
    w = ints(seed, (k, n), -8, 7) if int4 else ints(seed, (k, n))
    weight = {"int8": w, "int8_t": w.t().contiguous().t(),
              "int8_nz": quant.npu_format_cast(w, 29), "int4": pack_int4(w),
              "int4_t": pack_int4(w.t().contiguous()).t()}[layout]
    group = data.draw(st.sampled_from([8, 16, 24, 64, k])) if gran == "group" else 0
    shape = {"tensor": (1,), "channel": (n,), "channel2d": (1, n),
             "group": (math.ceil(k / group) if group else 1, n)}[gran]
    scale = rand(seed + 1, shape, 0.1, lo=0.001).to(dtype)
    offset = rand(seed + 2, shape, 4.0).round().to(dtype) if with_offset else None
    bias = rand(seed + 3, (n,), 2.0).to(dtype) if with_bias else None
    x = rand(seed + 4, (m, k), 1.0).to(dtype)
    args = (x, weight, scale, offset, None, None, bias)
    before = ck.builds("wq_weights")
    with _isa(wide):
        y = fast(mm.npu_weight_quant_batchmatmul, *args, antiquant_group_size=group)
    assert ck.builds("wq_weights") == before + 1  # the fast path ran (a new weight)
    ref = exact(mm.npu_weight_quant_batchmatmul, *args, antiquant_group_size=group)
    assert y.dtype == ref.dtype == dtype and y.shape == ref.shape == (m, n)
    W = exact(mm._antiquant, w, scale, offset, group)
    mag = x.double().abs() @ W.double().abs() + (0 if bias is None else bias.double().abs())
    _close(y, ref, mag, dtype)


@needs_native
def test_weight_quant_batchmatmul_requant_and_batch_dims(isa):
    """quant_scale -> int8 (+-1 only where the fp32 value sits at a rounding tie); batch
    dims of x; an int64 (quant param) antiquant scale; rows beyond the kernel's tile
    (dequantise-then-GEMM)."""
    k, n = 96, 40
    w = ints(1, (k, n), -8, 7)
    scale = quant.npu_trans_quant_param(rand(2, (n,), 0.05, lo=0.01))
    qs, qo = rand(3, (n,), 40.0, lo=5.0), rand(4, (n,), 3.0).round()
    for x in (rand(5, (2, 3, k)), rand(6, (ck.WQ_MAX_KERNEL_ROWS + 5, k))):
        args = (x, pack_int4(w), scale, None, qs, qo)
        y = fast(mm.npu_weight_quant_batchmatmul, *args)
        ref = exact(mm.npu_weight_quant_batchmatmul, *args)
        assert y.dtype == torch.int8 and y.shape == ref.shape == (*x.shape[:-1], n)
        assert int((y.int() - ref.int()).abs().max()) <= 1
        yf = fast(mm.npu_weight_quant_batchmatmul, x, pack_int4(w), scale)
        rf = exact(mm.npu_weight_quant_batchmatmul, x, pack_int4(w), scale)
        W = mm._antiquant(w, scale, None, 0)
        _close(yf, rf, x.double().abs() @ W.double().abs(), torch.float32)


@needs_native
def test_wq_cache_invalidation():
    """The packed weight is built once per weight; a new scale tensor rebuilds only the
    scale table; an in-place write to the weight or the scale rebuilds what it feeds."""
    k, n, group = 64, 48, 16
    w = ints(1, (k, n), -8, 7)
    packed = pack_int4(w)
    s1, s2 = rand(2, (k // group, n), 0.1, lo=0.01), rand(3, (k // group, n), 0.1, lo=0.01)
    x = rand(4, (3, k))

    def run(weight, scale):
        return fast(mm.npu_weight_quant_batchmatmul, x, weight, scale,
                    antiquant_group_size=group)

    def ref(weight, scale):
        return exact(mm.npu_weight_quant_batchmatmul, x, weight, scale,
                     antiquant_group_size=group)

    def check(weight, scale):
        W = mm._antiquant(mm._int_weight(weight, k, "w"), scale, None, group)
        _close(run(weight, scale), ref(weight, scale), x.double().abs() @ W.double().abs(),
               torch.float32)

    wb, pb = ck.builds("wq_weights"), ck.builds("wq_params")
    check(packed, s1)
    check(packed, s1)
    assert (ck.builds("wq_weights"), ck.builds("wq_params")) == (wb + 1, pb + 1)
    check(packed, s2)  # new scale tensor: new table, same packed weight
    assert (ck.builds("wq_weights"), ck.builds("wq_params")) == (wb + 1, pb + 2)
    s2.mul_(3.0)  # in-place scale change
    check(packed, s2)
    assert (ck.builds("wq_weights"), ck.builds("wq_params")) == (wb + 1, pb + 3)
    packed.copy_(pack_int4(ints(5, (k, n), -8, 7)))  # in-place weight change
    check(packed, s2)
    assert ck.builds("wq_weights") == wb + 2


@needs_native
def test_nz_cast_weight_then_used():
    """A weight NZ-cast at load time (the schemes' ``npu_format_cast(w, 29)``) keeps its
    format and runs on the fast paths with the plain path's results."""
    k, n = 128, 64
    w8 = quant.npu_format_cast(ints(1, (n, k)).t().contiguous(), 29)
    assert quant.get_npu_format(w8) == 29
    x = rand(2, (5, k))
    s = rand(3, (n,), 0.01, lo=1e-3)
    y = fast(mm.npu_weight_quant_batchmatmul, x, w8, s)
    _close(y, exact(mm.npu_weight_quant_batchmatmul, x, w8, s),
           x.double().abs() @ (w8.double().abs() * s.double()), torch.float32)
    if INT8_BACKENDS:
        xq, xs = fast(quant.npu_dynamic_quant, x)
        kw = {"pertoken_scale": xs, "output_dtype": torch.float32}
        assert torch.equal(fast(mm.npu_quant_matmul, xq, w8, s, **kw),
                           exact(mm.npu_quant_matmul, xq, w8, s, **kw))
    assert quant.get_npu_format(w8) == 29


def test_weight_quant_rejections_still_come_from_the_op():
    """Inputs the reference rejects are not taken by the fast path: same errors."""
    x = torch.ones(2, 16)
    with pytest.raises(ValueError, match="antiquant_scale"):
        mm.npu_weight_quant_batchmatmul(x, torch.ones(16, 8, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="needs antiquant_scale"):
        mm.npu_weight_quant_batchmatmul(x, torch.ones(16, 8, dtype=torch.int8), None)
    with pytest.raises(ValueError, match="weight"):
        mm.npu_weight_quant_batchmatmul(x, torch.ones(5, 3, dtype=torch.int32), torch.ones(1))
    assert ck.weight_quant_mm(x, torch.ones(16, 8, dtype=torch.int8), torch.ones(3), None, 0) \
        is None


# ---------------------------------------------------------------- npu_dynamic_quant


@needs_native
@given(rows=st.integers(1, 70), h=st.integers(1, 300), seed=SEEDS,
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       special=st.sampled_from([None, "zero", "nan", "inf", "ties"]), batch=st.booleans())
def test_dynamic_quant_bit_identical(rows, h, seed, dtype, special, batch):
    x = rand(seed, (rows, h), 50.0)
    if special == "zero":
        x[rows // 2] = 0
    elif special == "nan":
        x[rows // 2, h // 2] = float("nan")
    elif special == "inf":
        x[rows // 2, h // 2] = float("inf")
    elif special == "ties":  # scale 1 exactly: x / scale lands on .5 ties
        x[0] = torch.arange(h, dtype=torch.float32) % 8 - 3.5
        x[0, 0] = 127.0
    x = x.to(dtype)
    if batch:
        x = x.reshape(1, rows, h)
    y, s = fast(quant.npu_dynamic_quant, x)
    ry, rs = exact(quant.npu_dynamic_quant, x)
    assert y.dtype == ry.dtype == torch.int8 and s.dtype == rs.dtype == torch.float32
    assert torch.equal(y, ry)
    assert torch.equal(s, rs)


def test_dynamic_quant_other_forms_keep_plain_path():
    """Smooth scales, group_index, int4 targets: the plain path (fast returns nothing)."""
    x = rand(1, (4, 16), 5.0)
    assert ck.dynamic_quant(torch.ones(4, 0)) is None
    assert ck.dynamic_quant(torch.ones(4, 8, dtype=torch.int32)) is None
    y, s = quant.npu_dynamic_quant(x, dst_type=torch.quint4x2)
    assert y.dtype == torch.int32 and y.shape == (4, 2)
    y, s = quant.npu_dynamic_quant(x, smooth_scales=torch.full((16,), 2.0))
    ry, rs = exact(quant.npu_dynamic_quant, x * 2)
    assert torch.equal(y, ry) and torch.equal(s, rs)


# ---------------------------------------------------------------- switches and op checks


def test_exact_env_switch():
    """VLLM_ASCEND_REFERENCE_EXACT=1 turns the fast paths off for the process."""
    code = ("from vllm_ascend.device.reference import cpu_kernels as c; import torch; "
            "print(c.force_exact, c.int8_mm(torch.ones(2, 8, dtype=torch.int8), "
            "torch.ones(8, 4, dtype=torch.int8)) is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, ck.EXACT_ENV: "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["True", "True"]


@needs_native
def test_native_ops_have_fake_kernels():
    """torch.compile support: schemas and meta/fake kernels agree with the CPU kernels."""
    k, n = 64, 40
    w = ints(1, (k, n), -8, 7)
    packed = ck._pack_weight(pack_int4(w), k, n, 4)
    table = ck._param_table(rand(2, (k // 16, n), 0.1, lo=0.01), n, 16)
    x = rand(3, (5, k))
    torch.library.opcheck(torch.ops.vllm_ascend.wq_matmul.default,
                          (x, packed, table, None, 4, 16, n, True))
    torch.library.opcheck(torch.ops.vllm_ascend.wq_dequant.default,
                          (packed, table, table, 4, 16, n))
    torch.library.opcheck(torch.ops.vllm_ascend.dynamic_quant_int8.default, (x,))
    torch.library.opcheck(torch.ops.vllm_ascend.i8_matmul.default,
                          (ints(7, (5, 63)), ck._pack_int8_pairs(ints(8, (63, n))), n))
    torch.library.opcheck(ck._wq_op, (x, pack_int4(w), rand(4, (n,), 0.1), None, 0, n, 4))
    if ck.onednn_available():
        torch.library.opcheck(ck._int8_mm_op, (ints(5, (3, k)), ints(6, (k, n))))


@needs_native
def test_fast_paths_under_torch_compile():
    """Traced by dynamo the fast paths are opaque custom ops; results match eager."""
    k, n = 64, 48
    w8 = quant.npu_format_cast(ints(1, (n, k)).t().contiguous(), 29)
    w4 = pack_int4(ints(2, (k, n), -8, 7))
    s8, s4 = rand(3, (n,), 0.01, lo=1e-3), rand(4, (k // 16, n), 0.1, lo=0.01)

    def linear_w8a8(x):
        xq, xs = quant.npu_dynamic_quant(x)
        return mm.npu_quant_matmul(xq, w8, s8, pertoken_scale=xs, output_dtype=x.dtype)

    def linear_w4(x):
        return mm.npu_weight_quant_batchmatmul(x, w4, s4, antiquant_group_size=16)

    x = rand(5, (3, k))
    for fn in (linear_w8a8, linear_w4):
        if fn is linear_w8a8 and not INT8_BACKENDS:
            continue
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend="aot_eager")
        assert torch.equal(fast(compiled, x), fast(fn, x))


@needs_native
def test_inference_mode_tensors():
    """vLLM runs the forward under torch.inference_mode: tensors made there (e.g. a scale
    cast per call) have no version counter; the caches take them as they are."""
    k, n = 64, 32
    w = pack_int4(ints(1, (k, n), -8, 7))
    x = rand(2, (2, k))
    with torch.inference_mode():
        s = rand(3, (n,), 0.1, lo=0.01) * 1.0  # an inference tensor
        w_inf = w.clone()
        y = fast(mm.npu_weight_quant_batchmatmul, x, w_inf, s)
        y2 = fast(mm.npu_weight_quant_batchmatmul, x, w_inf, s)
        ref = exact(mm.npu_weight_quant_batchmatmul, x, w_inf, s)
        if INT8_BACKENDS:
            w8 = ints(4, (k, n)).clone()
            xq, xs = fast(quant.npu_dynamic_quant, x)
            kw = {"pertoken_scale": xs, "output_dtype": torch.float32}
            assert torch.equal(fast(mm.npu_quant_matmul, xq, w8, s, **kw),
                               exact(mm.npu_quant_matmul, xq, w8, s, **kw))
    assert torch.equal(y, y2)
    W = mm._antiquant(mm._int_weight(w, k, "w"), s, None, 0)
    _close(y, ref, x.double().abs() @ W.double().abs(), torch.float32)
