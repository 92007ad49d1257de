"""W4A4_FLATQUANT_DYNAMIC linear vs float64 math.

Facts pinned (vllm-ascend ``quantization/methods/w4a4_flatquant.py``; CANN aclnnFlatQuant):
``left_trans (K1, K1)``, ``right_trans (K2, K2)`` with K1, K2 from the difference-of-squares
rule, the transform ``P1^T @ X @ P2`` of each token viewed as ``X (K1, K2)``, per-token int4
with scale ``clip_ratio * max|t| / 7``, per-channel int4 weights.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.quantization.errors import AscendQuantizationError, QuantTensorError
from vllm_ascend.quantization.methods.w4a4_flatquant import kronecker_dims

from ._w4_helpers import (  # noqa: F401  (single_rank is an autouse fixture)
    column_loader,
    copy_into,
    int4_values,
    scheme,
    single_rank,
    uniform,
)

SEEDS = st.integers(0, 2**31 - 1)
PREFIX = "model.layers.1.self_attn.qkv_proj"


@pytest.mark.parametrize("k, dims", [(4096, (64, 64)), (11008, (86, 128)), (8, (2, 4)),
                                     (24, (4, 6)), (64, (8, 8)), (96, (8, 12)), (7, (1, 7))])
def test_kronecker_dims(k, dims):
    assert kronecker_dims(k) == dims


@given(k=st.integers(1, 4000).filter(lambda v: v % 4 != 2))
def test_kronecker_dims_is_the_closest_same_parity_factor_pair(k):
    k1, k2 = kronecker_dims(k)
    assert k1 * k2 == k and k1 <= k2 and (k2 - k1) % 2 == 0
    for a in range(k1 + 1, int(k**0.5) + 1):  # no closer pair of the same parity
        assert k % a or (k // a - a) % 2


def test_kronecker_dims_rejects_2_mod_4():
    with pytest.raises(ValueError, match="difference of two squares"):
        kronecker_dims(6)


def checkpoint(n, k, seed, clip):
    k1, k2 = kronecker_dims(k)
    return {
        "weight": int4_values(seed, (n, k)),
        "weight_scale": uniform(seed + 1, (n, 1), 1e-3, 4e-3),
        "weight_offset": torch.zeros(n, 1),
        "left_trans": uniform(seed + 2, (k1, k1), -1.0, 1.0) + 2 * torch.eye(k1),
        "right_trans": uniform(seed + 3, (k2, k2), -1.0, 1.0) + 2 * torch.eye(k2),
        "clip_ratio": torch.tensor([clip]),
    }


def build(tensors, widths=None, input_size=None):
    n, k = tensors["weight"].shape
    sch = scheme("W4A4_FLATQUANT_DYNAMIC", "linear", {}, PREFIX)
    layer = torch.nn.Module()
    sch.create_weights(layer, k, widths or [n], input_size or k, n, torch.float32, column_loader)
    return sch, layer


def loaded(tensors, via_loader=True):
    sch, layer = build(tensors)
    if via_loader:
        for name, t in tensors.items():
            getattr(layer, name).weight_loader(getattr(layer, name), t)
    else:
        copy_into(layer, tensors)
    sch.process_weights_after_loading(layer)
    return sch, layer


def reference(x, tensors):
    """float64 FlatQuant: transform, clipped per-token int4, int4 x int4, scales. Also the
    error allowance for elements within 1e-3 of a rounding tie (fp32 vs fp64 may differ)."""
    w, sw = tensors["weight"].double(), tensors["weight_scale"].double().reshape(-1)
    p1, p2 = tensors["left_trans"].double(), tensors["right_trans"].double()
    clip = float(tensors["clip_ratio"])
    k1, k2 = p1.shape[0], p2.shape[0]
    t = (p1.t() @ x.double().reshape(-1, k1, k2) @ p2).reshape(x.shape[0], k1 * k2)
    s = t.abs().amax(dim=-1, keepdim=True) * clip / 7 if t.numel() else t.new_ones(0, 1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    r = t / s
    q = torch.round(r).clamp(-8, 7)
    near_tie = ((r - r.floor() - 0.5).abs() < 1e-3) & (r > -8.5) & (r < 7.5)
    y = (q @ w.t()) * s * sw
    mag = (q.abs() @ w.abs().t()) * s * sw.abs()
    slack = (near_tie.double() @ w.abs().t()) * s * sw.abs()
    return y, mag, slack


@given(n8=st.integers(1, 3), k=st.sampled_from([8, 16, 24, 32, 48, 64, 96]), m=st.integers(0, 7),
       seed=SEEDS, clip=st.floats(0.5, 1.0), with_bias=st.booleans())
def test_matches_float64_flatquant(n8, k, m, seed, clip, with_bias):
    n = 8 * n8 - 3 * (n8 > 1)  # output size need not be a multiple of 8
    tensors = checkpoint(n, k, seed, clip)
    sch, layer = loaded(tensors)
    x = uniform(seed + 7, (m, k), -3.0, 3.0)
    bias = uniform(seed + 8, (n,), -1.0, 1.0) if with_bias else None
    y = sch.apply(layer, x, bias)
    real, mag, slack = reference(x, tensors)
    if bias is not None:
        real, mag = real + bias.double(), mag + bias.double().abs()
    assert y.shape == (m, n) and y.dtype == torch.float32
    err = (y.double() - real).abs()
    assert bool((err <= 1e-5 * mag + slack + 1e-12).all())


def test_exact_when_the_transform_is_the_identity():
    """Identity transforms, clip 1, tokens on the int4 grid: every step is exact."""
    tensors = checkpoint(8, 16, seed=3, clip=1.0)
    tensors["left_trans"], tensors["right_trans"] = torch.eye(4), torch.eye(4)
    sch, layer = loaded(tensors, via_loader=False)
    q = int4_values(4, (5, 16), -7, 7)
    q[:, 0] = 7  # the row max maps to 7 exactly
    step = torch.tensor([0.5, 0.25, 2.0, 1.0, 0.125]).reshape(5, 1)
    y = sch.apply(layer, q.float() * step)
    real = (q.double() @ tensors["weight"].double().t()) * step.double() \
        * tensors["weight_scale"].double().reshape(1, -1)
    torch.testing.assert_close(y.double(), real, rtol=1e-6, atol=0)


def test_clip_ratio_clamps_the_largest_values():
    tensors = checkpoint(8, 8, seed=5, clip=0.5)
    tensors["left_trans"], tensors["right_trans"] = torch.eye(2), torch.eye(4)
    tensors["weight"] = torch.eye(8, dtype=torch.int8)  # y[n] = s_x * s_w[n] * q[n]
    sch, layer = loaded(tensors, via_loader=False)
    x = torch.tensor([[7.0, -7.0, 3.5, 1.75, 0.0, 0.5, -3.5, 6.0]])
    y = sch.apply(layer, x) / tensors["weight_scale"].reshape(1, -1)
    s_x = 0.5 * 7 / 7  # clip * max|t| / 7
    expected = torch.tensor([[7, -8, 7, 4, 0, 1, -7, 7]]) * s_x  # 3.5 -> 7; 1.75 -> 3.5 -> 4
    torch.testing.assert_close(y, expected.float(), rtol=1e-6, atol=1e-7)


def test_batched_bf16_input_keeps_shape_and_dtype():
    tensors = checkpoint(16, 32, seed=6, clip=0.9)
    sch, layer = loaded(tensors)
    x = uniform(9, (2, 3, 32), -1, 1).to(torch.bfloat16)
    y = sch.apply(layer, x)
    assert y.shape == (2, 3, 16) and y.dtype == torch.bfloat16
    real, mag, slack = reference(x.float().reshape(6, 32), tensors)
    assert bool(((y.reshape(6, 16).double() - real).abs() <= 1e-2 * mag + slack).all())


@pytest.mark.parametrize("name, bad, match", [
    ("weight_scale", torch.zeros(8, 1), "zero"),
    ("weight_scale", torch.full((8, 1), float("nan")), "non-finite"),
    ("weight_offset", torch.full((8, 1), 0.5), "non-zero offset"),
    ("weight", torch.full((8, 16), -9, dtype=torch.int8), r"outside \[-8, 7\]"),
    ("left_trans", torch.full((4, 4), float("inf")), "non-finite"),
    ("right_trans", torch.ones(5, 5), r"shape \(5, 5\); expected \(4, 4\)"),
    ("clip_ratio", torch.tensor([0.0]), r"outside \(0, 1\]"),
    ("clip_ratio", torch.tensor([1.5]), r"outside \(0, 1\]"),
])
def test_bad_tensors_raise_naming_the_tensor(name, bad, match):
    tensors = checkpoint(8, 16, seed=2, clip=1.0)
    sch, layer = build(tensors)
    if bad.shape == tensors[name].shape:
        tensors[name] = bad
    else:
        getattr(layer, name).data = bad
        tensors.pop(name)
    copy_into(layer, tensors)
    with pytest.raises(QuantTensorError, match=match) as err:
        sch.process_weights_after_loading(layer)
    assert f"{PREFIX}.{name}" in str(err.value)


def test_unsupported_geometry():
    tensors = checkpoint(8, 16, seed=1, clip=1.0)
    with pytest.raises(AscendQuantizationError, match="tensor-parallel row sharding"):
        build(tensors, input_size=32)
    with pytest.raises(QuantTensorError, match="multiple of 8"):
        scheme("W4A4_FLATQUANT_DYNAMIC", "linear", {}, PREFIX).create_weights(
            torch.nn.Module(), 12, [8], 12, 8, torch.float32, column_loader)
