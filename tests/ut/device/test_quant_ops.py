"""Reference quantisation ops vs independent float64 math (shared/reference/torch_npu_ops.md)."""

from __future__ import annotations

import gc
import inspect
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference import quant
from vllm_ascend.device.reference._common import pack_int4, unpack_int4

SEEDS = st.integers(0, 2**31 - 1)


def rand(seed, shape, amp=10.0, lo=None):
    """Reproducible fp32 values, uniform in [-amp, amp] (or [lo, amp])."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    low = -amp if lo is None else lo
    return (low + u * (amp - low)).float()


def check_rounded(actual, real, lo, hi, tie_tol=1e-3):
    """actual == clamp(round_half_even(real)), exactly, except within tie_tol of a .5 tie,
    where fp32 and fp64 may legitimately land on either side (then |diff| <= 1)."""
    real = real.double()
    expected = torch.round(real).clamp(lo, hi)
    near_tie = ((real - torch.floor(real)) - 0.5).abs() < tie_tol
    diff = (actual.double() - expected).abs()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert bool((diff[~near_tie] == 0).all()), (actual, expected)
    assert bool((diff <= 1).all())


def f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


# ---------------------------------------------------------------- signatures


@pytest.mark.parametrize("fn, sig", [
    (quant.npu_dynamic_quant, "(input, *, smooth_scales=None, group_index=None, dst_type=None, "
                              "quant_mode='pertoken', dst_type_max=0.0)"),
    (quant.npu_dynamic_quant_asymmetric, "(input, *, smooth_scales=None, group_index=None, "
                                         "dst_type=None, quant_mode='pertoken', dst_type_max=0.0)"),
    (quant.npu_quantize, "(input, scales, zero_points, dtype, axis=1, div_mode=True)"),
    (quant.npu_convert_weight_to_int4pack, "(weight, inner_k_tiles=0)"),
    (quant.npu_trans_quant_param, "(scale, offset=None, round_mode=0)"),
    (quant.npu_format_cast, "(input, acl_format, *, customize_dtype=None, input_dtype=None)"),
])
def test_signatures_match_schema(fn, sig):
    assert str(inspect.signature(fn)) == sig


def test_facade_exposes_quant_ops(monkeypatch):
    from vllm_ascend.device import ops
    from vllm_ascend.device.facade import BACKEND_ENV

    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert ops.npu_dynamic_quant is quant.npu_dynamic_quant
    assert ops.npu_trans_quant_param is quant.npu_trans_quant_param
    assert "decode_quant_param" not in dir(ops) and "get_npu_format" not in dir(ops)


# ---------------------------------------------------------------- int4 packing


def test_pack_int4_bit_layout_hand_example():
    values = torch.tensor([[1, -1, 2, -2, 3, -3, 7, -8]], dtype=torch.int8)
    # nibbles lowest first: 1, F, 2, E, 3, D, 7, 8 -> 0x87D3E2F1, as signed int32.
    word = 0x87D3E2F1 - 2**32
    packed = pack_int4(values)
    assert packed.dtype == torch.int32 and packed.tolist() == [[word]]
    assert torch.equal(unpack_int4(packed), values)


@given(rows=st.integers(0, 4), words=st.integers(1, 4), seed=SEEDS)
def test_pack_unpack_round_trip(rows, words, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-8, 8, (rows, 8 * words), generator=g, dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(values)), values)
    packed = quant.npu_convert_weight_to_int4pack(values.to(torch.int32))
    assert packed.shape == (rows, words) and torch.equal(packed, pack_int4(values))


@pytest.mark.parametrize("weight", [
    torch.zeros(2, 8, dtype=torch.int8),           # wrong dtype
    torch.zeros(2, 7, dtype=torch.int32),          # last dim not a multiple of 8
    torch.zeros(8, dtype=torch.int32),             # not 2-d
    torch.full((1, 8), 8, dtype=torch.int32),      # out of int4 range
])
def test_convert_weight_to_int4pack_rejects(weight):
    with pytest.raises(ValueError, match="weight"):
        quant.npu_convert_weight_to_int4pack(weight)


# ---------------------------------------------------------------- npu_dynamic_quant


def expected_dynamic(x, smooth_rows, q):
    """float64 reference: (y_real, scale) with scale 1 for all-zero rows."""
    v = x.double() * smooth_rows.double()
    amax = v.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / q, torch.ones_like(amax))
    return v / scale[..., None], scale


@given(batch=st.integers(1, 2), rows=st.integers(0, 5), h=st.integers(1, 40), seed=SEEDS,
       zero_row=st.booleans(), smooth=st.booleans())
def test_dynamic_quant_int8(batch, rows, h, seed, zero_row, smooth):
    x = rand(seed, (batch, rows, h), 100.0)
    if zero_row and rows:
        x[:, rows // 2] = 0
    s = rand(seed + 1, (h,), 2.0) if smooth else None
    y, scale = quant.npu_dynamic_quant(x, smooth_scales=s)
    real, scale64 = expected_dynamic(x, torch.ones(h) if s is None else s, 127)
    assert y.dtype == torch.int8 and scale.dtype == torch.float32
    assert scale.shape == (batch, rows)
    torch.testing.assert_close(scale.double(), scale64, rtol=1e-6, atol=0)
    check_rounded(y, real, -127, 127)


@given(rows=st.integers(0, 5), words=st.integers(1, 4), seed=SEEDS, smooth=st.booleans())
def test_dynamic_quant_int4_packed(rows, words, seed, smooth):
    h = 8 * words
    x = rand(seed, (rows, h), 5.0)
    s = rand(seed + 1, (h,), 2.0) if smooth else None
    y, scale = quant.npu_dynamic_quant(x, smooth_scales=s, dst_type=torch.quint4x2)
    assert y.dtype == torch.int32 and y.shape == (rows, words)
    real, scale64 = expected_dynamic(x, torch.ones(h) if s is None else s, 7)
    torch.testing.assert_close(scale.double(), scale64, rtol=1e-6, atol=0)
    check_rounded(unpack_int4(y), real, -7, 7)
    # dtype code 16 is the same as torch.quint4x2.
    assert torch.equal(quant.npu_dynamic_quant(x, smooth_scales=s, dst_type=16)[0], y)


@given(rows=st.integers(0, 8), h=st.integers(1, 12), experts=st.integers(1, 4), seed=SEEDS,
       data=st.data())
def test_dynamic_quant_moe_group_index(rows, h, experts, seed, data):
    ends = sorted(data.draw(st.lists(st.integers(0, rows), min_size=experts, max_size=experts)))
    x = rand(seed, (rows, h), 50.0)
    smooth = rand(seed + 1, (experts, h), 2.0)
    y, scale = quant.npu_dynamic_quant(x, smooth_scales=smooth,
                                       group_index=torch.tensor(ends, dtype=torch.int32))
    factors = torch.ones(rows, h)
    for r in range(rows):
        owners = [e for e in range(experts) if (ends[e - 1] if e else 0) <= r < ends[e]]
        if owners:  # rows past the last end keep factor 1 (pinned choice)
            factors[r] = smooth[owners[0]]
    real, scale64 = expected_dynamic(x, factors, 127)
    torch.testing.assert_close(scale.double(), scale64, rtol=1e-6, atol=0)
    check_rounded(y, real, -127, 127)


def test_dynamic_quant_all_zero_rows_get_scale_one():
    """Pinned choice: an all-zero row has scale 1.0 and y 0 (the device leaves it undefined)."""
    x = torch.zeros(3, 16)
    x[1, 3] = -2.0
    for dst, width in ((torch.int8, 16), (torch.quint4x2, 2)):
        y, scale = quant.npu_dynamic_quant(x, dst_type=dst)
        assert y.shape == (3, width)
        q = 127 if dst == torch.int8 else 7
        assert scale[0] == 1.0 and scale[2] == 1.0 and scale[1] == torch.tensor(2.0) / q
        assert torch.isfinite(scale).all() and not y[0].any() and not y[2].any()


def test_dynamic_quant_empty_and_half_to_even():
    y, scale = quant.npu_dynamic_quant(torch.zeros(0, 8))
    assert y.shape == (0, 8) and scale.shape == (0,)
    # scale = 127 / 127 = 1 exactly, so v / scale hits the .5 ties exactly.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])
    y, scale = quant.npu_dynamic_quant(x)
    assert scale.tolist() == [1.0]
    assert y.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]


@pytest.mark.parametrize("kwargs, match", [
    ({"dst_type": torch.int32}, "dst_type"),
    ({"dst_type": 6}, "dst_type"),
    ({"dst_type": torch.quint4x2, "_h": 12}, "multiple of 8"),
    ({"smooth_scales": torch.ones(5)}, "smooth_scales"),
    ({"group_index": torch.tensor([2, 4], dtype=torch.int32)}, "smooth_scales"),
    ({"smooth_scales": torch.ones(2, 8), "group_index": torch.tensor([3, 1])}, "non-decreasing"),
    ({"smooth_scales": torch.ones(2, 8), "group_index": torch.tensor([1, 2, 3])}, "group_index"),
    ({"smooth_scales": torch.ones(2, 8), "group_index": torch.tensor([1])}, "group_index"),
    ({"smooth_scales": torch.ones(2, 8), "group_index": torch.tensor([1, 9])}, "rows"),
    ({"quant_mode": "perchannel"}, "quant_mode"),
])
def test_dynamic_quant_rejects(kwargs, match):
    h = kwargs.pop("_h", 8)
    with pytest.raises(ValueError, match=match):
        quant.npu_dynamic_quant(torch.ones(4, h), **kwargs)


def test_dynamic_quant_rejects_non_float_input():
    with pytest.raises(ValueError, match="floating"):
        quant.npu_dynamic_quant(torch.ones(4, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="H > 0"):
        quant.npu_dynamic_quant(torch.ones(4, 0))


# ---------------------------------------------------------------- asymmetric


@given(rows=st.integers(0, 5), words=st.integers(1, 3), seed=SEEDS, int4=st.booleans(),
       constant_row=st.booleans())
def test_dynamic_quant_asymmetric(rows, words, seed, int4, constant_row):
    h = 8 * words
    x = rand(seed, (rows, h), 20.0, lo=-5.0)
    if constant_row and rows:
        x[0] = 3.25
    dst = torch.quint4x2 if int4 else torch.int8
    lo, hi = (-8, 7) if int4 else (-128, 127)
    y, scale, offset = quant.npu_dynamic_quant_asymmetric(x, dst_type=dst)
    v = x.double()
    vmax, vmin = v.amax(-1), v.amin(-1)
    scale64 = torch.where(vmax > vmin, (vmax - vmin) / (hi - lo), torch.ones_like(vmax))
    offset64 = hi - vmax / scale64
    torch.testing.assert_close(scale.double(), scale64, rtol=1e-6, atol=0)
    torch.testing.assert_close(offset.double(), offset64, rtol=1e-5, atol=1e-4)
    check_rounded(unpack_int4(y) if int4 else y, v / scale64[:, None] + offset64[:, None], lo, hi)


# ---------------------------------------------------------------- npu_quantize

_TARGETS = {torch.qint8: (torch.int8, -128, 127), torch.quint8: (torch.uint8, 0, 255),
            torch.qint32: (torch.int32, -(2**31), 2**31 - 1), torch.quint4x2: (None, -8, 7)}


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data(), seed=SEEDS,
       target=st.sampled_from(list(_TARGETS)), div_mode=st.booleans(),
       per_channel=st.booleans(), zp=st.sampled_from([None, "int8", "float"]))
def test_quantize(shape, data, seed, target, div_mode, per_channel, zp):
    if target == torch.quint4x2:
        shape[-1] *= 8
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis] if per_channel else 1
    x = rand(seed, shape, 300.0)
    scales = rand(seed + 1, (n,), 3.0, lo=0.05)
    zero_points = None
    if zp == "int8":
        zero_points = torch.randint(-20, 20, (n,), generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.int8)
    elif zp == "float":
        zero_points = rand(seed + 2, (n,), 20.0).round()
    y = quant.npu_quantize(x, scales, zero_points, target, axis=axis, div_mode=div_mode)
    view = [1] * len(shape)
    view[axis] = n
    s = scales.double().reshape(view)
    real = x.double() / s if div_mode else x.double() * s
    if zero_points is not None:
        real = real + zero_points.double().reshape(view)
    dtype, lo, hi = _TARGETS[target]
    if target == torch.quint4x2:
        assert y.dtype == torch.int32 and y.shape[-1] == shape[-1] // 8
        y = unpack_int4(y)
    else:
        assert y.dtype == dtype
    check_rounded(y, real, lo, hi)


def test_quantize_rounding_zero_point_and_saturation():
    one = torch.tensor([1.0])
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1e3, -1e3])
    assert quant.npu_quantize(x, one, None, torch.qint8, axis=0).tolist() == \
        [0, 2, 2, 0, -2, -2, 127, -128]
    # the zero point is added before rounding: round(0.5 + 1) = 2, round(1.5 + 1) = 2
    assert quant.npu_quantize(x[:2], one, torch.tensor([1]), 12, axis=0).tolist() == [2, 2]
    assert quant.npu_quantize(x, one, None, torch.quint8, axis=0).tolist() == \
        [0, 2, 2, 0, 0, 0, 255, 0]
    big = torch.tensor([1e10, -1e10, 2.5])
    assert quant.npu_quantize(big, one, None, torch.qint32, axis=0).tolist() == \
        [2**31 - 1, -(2**31), 2]
    # div_mode=False multiplies; quint4x2 clamps to [-8, 7] and packs eight per int32.
    x4 = torch.tensor([[10.0, -10.0, 1.0, -1.0, 3.0, 0.25, -3.5, 7.0]])
    y4 = quant.npu_quantize(x4, torch.tensor([2.0]), None, torch.quint4x2, div_mode=False)
    assert y4.dtype == torch.int32 and y4.shape == (1, 1)
    assert unpack_int4(y4).tolist() == [[7, -8, 2, -2, 6, 0, -7, 7]]


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.ones(2, 3), torch.ones(1), None, torch.float32), {}, "dtype"),
    ((torch.ones(2, 3), torch.ones(1), None, 6), {}, "dtype"),
    ((torch.ones(2, 3), torch.ones(1), None, 99), {}, "dtype"),
    ((torch.ones(2, 3), torch.ones(2), None, torch.qint8), {"axis": 1}, "scales"),
    ((torch.ones(2, 3), torch.ones(3), torch.ones(4), torch.qint8), {}, "zero_points"),
    ((torch.ones(2, 3), torch.ones(3), None, torch.qint8), {"axis": 2}, "axis"),
    ((torch.ones(2, 3), torch.ones(1), None, torch.quint4x2), {}, "multiple of 8"),
    ((torch.ones(2, 3, dtype=torch.int8), torch.ones(1), None, torch.qint8), {}, "floating"),
])
def test_quantize_rejects(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        quant.npu_quantize(*args, **kwargs)


# ---------------------------------------------------------------- npu_trans_quant_param


def test_trans_quant_param_hand_encoding():
    enc = quant.npu_trans_quant_param(torch.tensor([1.0, 1.0, -2.0]),
                                      torch.tensor([0.0, 3.0, -1.0]))
    assert enc.dtype == torch.int64
    assert enc.tolist() == [
        (1 << 46) | 0x3F800000,
        (1 << 46) | (3 << 37) | 0x3F800000,
        (1 << 46) | (0x1FF << 37) | 0xC0000000,
    ]
    assert quant.decode_quant_param(enc).tolist() == [1.0, 1.0, -2.0]
    assert quant.decode_quant_offset(enc).tolist() == [0.0, 3.0, -1.0]
    # 0.1 = 0x3DCCCCCD: the low 13 bits are cleared (truncation toward zero).
    assert quant.npu_trans_quant_param(torch.tensor([0.1])).tolist() == [(1 << 46) | 0x3DCCC000]


finite32 = st.floats(-(2.0**100), 2.0**100, allow_nan=False, allow_infinity=False, width=32)


@given(scales=st.lists(finite32, min_size=1, max_size=6), data=st.data())
def test_trans_quant_param_round_trip(scales, data):
    offsets = data.draw(st.lists(st.floats(-400, 400, width=32), min_size=len(scales),
                                 max_size=len(scales)))
    enc = quant.npu_trans_quant_param(torch.tensor(scales), torch.tensor(offsets))
    rounded = quant.npu_trans_quant_param(torch.tensor(scales), round_mode=1)
    for i, (s, o) in enumerate(zip(scales, offsets)):
        off9 = max(-256, min(255, round(o))) & 0x1FF  # Python round(): half to even
        bits = f32_bits(s)
        assert enc[i].item() == (1 << 46) | (off9 << 37) | (bits & 0xFFFFE000)
        assert quant.decode_quant_param(enc[i : i + 1]).item() == bits_f32(bits & 0xFFFFE000)
        assert quant.decode_quant_offset(enc[i : i + 1]).item() == max(-256, min(255, round(o)))
        rem, up = bits & 0x1FFF, (bits & ~0x1FFF) + 0x2000
        nearest = up if rem > 0x1000 or (rem == 0x1000 and bits & 0x2000) else bits & ~0x1FFF
        assert rounded[i].item() == (1 << 46) | (nearest & 0xFFFFE000)
        if abs(s) >= 2.0**-126:  # normal numbers keep 10 mantissa bits
            assert abs(quant.decode_quant_param(rounded[i : i + 1]).item() - s) <= abs(s) * 2.0**-10


def test_trans_quant_param_shapes_and_errors():
    f = quant.npu_trans_quant_param
    assert f(torch.ones(4), torch.ones(1)).shape == (4,)
    assert f(torch.ones(1), torch.ones(4)).shape == (4,)
    assert f(torch.ones(1, 4), torch.ones(1, 4)).shape == (1, 4)
    assert f(torch.ones(1, 4)).shape == (1, 4)
    with pytest.raises(ValueError, match="scale"):
        f(torch.ones(2, 3))
    with pytest.raises(ValueError, match="offset"):
        f(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="round_mode"):
        f(torch.ones(3), round_mode=2)


# ---------------------------------------------------------------- npu_format_cast


def test_format_cast_remembers_format():
    x = torch.randn(4, 6)
    assert quant.get_npu_format(x) == 2
    y = quant.npu_format_cast(x, 29)
    assert torch.equal(y, x) and y.shape == x.shape
    assert quant.get_npu_format(y) == 29 and quant.get_npu_format(x) == 2
    assert quant.get_npu_format(y.t()) == 29  # views share the storage's format
    assert quant.npu_format_cast(y, 29) is y  # already in that format
    back = quant.npu_format_cast(y, 2)
    assert quant.get_npu_format(back) == 2 and torch.equal(back, x)
    assert quant.get_npu_format(torch.empty(0)) == 2
    z = quant.npu_format_cast(x, 29, customize_dtype=torch.int8, input_dtype=1)
    assert quant.get_npu_format(z) == 29


def test_format_cast_with_parameters():
    p = torch.nn.Parameter(torch.randn(3, 5))
    values = p.detach().clone()
    p.data = quant.npu_format_cast(p.data, 29)
    gc.collect()
    assert isinstance(p, torch.nn.Parameter) and torch.equal(p.detach(), values)
    assert quant.get_npu_format(p) == 29 and quant.get_npu_format(p.data) == 29
    q = torch.nn.Parameter(torch.randn(2, 2))
    out = quant.npu_format_cast(q, 29)
    assert quant.get_npu_format(out) == 29 and quant.get_npu_format(q) == 2
    assert quant.npu_format_cast_(q.data, 29) is not None and quant.get_npu_format(q) == 29
    r = torch.zeros(2)
    assert quant.npu_format_cast_(r, q) is r and quant.get_npu_format(r) == 29


@pytest.mark.parametrize("fmt", [5, -1, 2.0, "ND", True])
def test_format_cast_rejects_unknown_format(fmt):
    with pytest.raises(ValueError, match="acl_format"):
        quant.npu_format_cast(torch.ones(2), fmt)


def test_group_ends_validation():
    assert quant.group_ends([0, 2, 2, 5], 4, 5, arg="g").tolist() == [0, 2, 2, 5]
    with pytest.raises(ValueError, match="g has 3 entries"):
        quant.group_ends([1, 2, 3], 2, 5, arg="g")
