"""W4A8_DYNAMIC linear: both checkpoint layouts, the int4 formats, and the math vs float64.

Facts pinned here (vllm-ascend ``quantization/methods/w4a8.py``): description ``version``
"1.0.0" stores two int4 per int8 byte along the output dim (even output in the low nibble),
otherwise one int4 per int8; ``group_size`` defaults to 256; the per-group scale is
``weight_scale * weight_scale_second``. Activations are int8 per-token dynamic (the plugin's
choice, see the scheme's docstring), so the float64 reference quantizes x the same way; a
1.0.0 ``scale_bias`` must match ``8 * sum_k w s``.
"""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_ascend.device.reference._common import pack_int4
from vllm_ascend.quantization.errors import DescriptionError, QuantTensorError
from vllm_ascend.quantization.methods import w4a8_dynamic
from vllm_ascend.quantization.methods._int4 import (
    decode_scale,
    encode_scale,
    kernel_int4,
    msd_bias,
    pack_int4_pairs,
    unpack_int4_pairs,
)

from ._w4_helpers import (  # noqa: F401  (single_rank is an autouse fixture)
    check_close,
    column_loader,
    copy_into,
    int4_values,
    scheme,
    single_rank,
    uniform,
)

SEEDS = st.integers(0, 2**31 - 1)
PREFIX = "model.layers.3.mlp.down_proj"


# ------------------------------------------------------------------------- int4 formats

@given(rows=st.integers(1, 6), cols=st.integers(1, 5), dim=st.integers(0, 1), seed=SEEDS)
def test_int4_pairs_round_trip(rows, cols, dim, seed):
    shape = (2 * rows, cols) if dim == 0 else (cols, 2 * rows)
    values = int4_values(seed, shape)
    packed = pack_int4_pairs(values, dim=dim)
    assert packed.dtype == torch.int8 and packed.shape[dim] == rows
    assert torch.equal(unpack_int4_pairs(packed, dim=dim), values)
    # and every byte value survives unpack -> pack
    every = torch.arange(-128, 128, dtype=torch.int8).reshape(256, 1)
    assert torch.equal(pack_int4_pairs(unpack_int4_pairs(every, 0), 0), every)


def test_int4_pairs_nibble_order():
    """Byte r holds output 2r in its low nibble and 2r + 1 in its high nibble."""
    values = torch.tensor([[1], [-2], [7], [-8]], dtype=torch.int8)
    packed = pack_int4_pairs(values, dim=0)
    assert packed.flatten().tolist() == [(0xE << 4 | 0x1) - 256, (0x8 << 4 | 0x7) - 256]


@pytest.mark.skipif(sys.byteorder != "little", reason="the zero-copy view needs little endian")
@given(k=st.integers(1, 5), n8=st.integers(1, 4), seed=SEEDS)
def test_pairs_layout_is_the_kernel_layout_viewed_as_int32(k, n8, seed):
    """vllm-ascend reinterprets the transposed 1.0.0 weight as int32; going through the values
    (what the schemes do) gives the identical kernel tensor."""
    values = int4_values(seed, (8 * n8, k))  # (N, K) checkpoint layout
    packed = pack_int4_pairs(values, dim=0)  # (N/2, K)
    viewed = packed.t().contiguous().view(torch.int32)  # (K, N/8)
    assert torch.equal(viewed, kernel_int4(values.t()))
    assert torch.equal(viewed, pack_int4(values.t().contiguous()))


@given(seed=SEEDS)
def test_encode_scale_keeps_a_10_bit_mantissa(seed):
    s = uniform(seed, (50,), 1e-6, 10.0)
    words = encode_scale(s)
    assert words.dtype == torch.int64 and bool((words >> 32 == 0).all())
    back = decode_scale(words)
    assert bool(((back.double() - s.double()).abs() <= 2.0**-11 * s.double()).all())
    assert torch.equal(decode_scale(encode_scale(back)), back)  # representable values are kept


def test_msd_bias_is_eight_times_the_dequantised_column_sum():
    values = int4_values(1, (2, 8, 3))
    scale = uniform(2, (2, 2, 3), 0.1, 1.0)
    expected = 8 * (values.double() * scale.double().repeat_interleave(4, dim=1)).sum(dim=1)
    torch.testing.assert_close(msd_bias(values, scale).double(), expected)


# ------------------------------------------------------------------- checkpoint builders

def checkpoint(n, k, group, seed):
    """int4 values (N, K), per-channel scale (N, 1), per-group scale (N, K/G) or None."""
    values = int4_values(seed, (n, k))
    scale = uniform(seed + 1, (n, 1), 1e-3, 4e-3)
    second = uniform(seed + 2, (n, k // group), 0.5, 2.0) if group else None
    return values, scale, second


def tensors_for(values, scale, second, packed, bias_cols=1):
    """The checkpoint tensors; a 1.0.0 scale_bias from the quantizer's own formula."""
    from vllm_ascend.tools.quantize_math import scale_bias

    n = values.shape[0]
    t = {"weight": pack_int4_pairs(values, dim=0) if packed else values.clone(),
         "weight_scale": scale, "weight_offset": torch.zeros(n, 1)}
    if second is not None:
        t["weight_scale_second"] = second
        t["weight_offset_second"] = torch.zeros_like(second)
    if packed:
        full = scale if second is None else scale * second
        t["scale_bias"] = scale_bias(values, full, bias_cols)
    return t


def build(values, scale, second, packed, group, dtype=torch.float32, widths=None,
          loader=column_loader):
    n, k = values.shape
    desc = {"group_size": group} | ({"version": "1.0.0"} if packed else {})
    sch = scheme("W4A8_DYNAMIC", "linear", desc, PREFIX)
    layer = torch.nn.Module()
    sch.create_weights(layer, k, widths or [n], k, n, dtype, loader)
    return sch, layer


def quantize_rows(x):
    """Per-token symmetric int8 as ``npu_dynamic_quant``: ``round(x / s) * s``, float64."""
    s = x.float().abs().amax(dim=-1, keepdim=True) / 127
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.round(x.float() / s).clamp(-127, 127).double() * s.double()


def reference(x, values, scale, second, group, bias=None):
    """float64 ``xq @ W_deq^T`` with ``W_deq[n, k] = w[n, k] * s_c[n] * s_g[n, k // G]``
    (``xq``: x quantized per token to int8 and back)."""
    x = quantize_rows(x)
    s = scale.double() if second is None else \
        scale.double() * second.double().repeat_interleave(group, dim=1)
    w = values.double() * s
    y = x.double() @ w.t()
    mag = x.double().abs() @ w.abs().t()
    if bias is not None:
        y, mag = y + bias.double(), mag + bias.double().abs()
    return y, mag


# ----------------------------------------------------------------- loading and the math

@given(n8=st.integers(1, 4), group=st.sampled_from([0, 8, 16]), groups=st.integers(1, 3),
       m=st.integers(0, 6), seed=SEEDS, with_bias=st.booleans())
def test_both_layouts_load_to_one_form_and_match_float64(n8, group, groups, m, seed, with_bias):
    n, k = 8 * n8, (group or 8) * groups
    values, scale, second = checkpoint(n, k, group, seed)
    outs, forms = [], []
    x = uniform(seed + 5, (m, k), -2.0, 2.0)
    bias = uniform(seed + 6, (n,), -1.0, 1.0) if with_bias else None
    for packed in (False, True):
        sch, layer = build(values, scale, second, packed, group)
        for name, t in tensors_for(values, scale, second, packed).items():
            getattr(layer, name).weight_loader(getattr(layer, name), t)
        sch.process_weights_after_loading(layer)
        forms.append({name: p.detach().clone() for name, p in layer.named_parameters()})
        outs.append(sch.apply(layer, x, bias))
    assert forms[0].keys() == forms[1].keys() == {"weight", "weight_scale", "scale_bias"}
    for name in forms[0]:
        assert torch.equal(forms[0][name], forms[1][name]), name
    assert forms[0]["weight"].dtype == torch.int32 and forms[0]["weight"].shape == (k, n // 8)
    assert forms[0]["weight_scale"].shape == (k // group if group else 1, n)
    assert torch.equal(outs[0], outs[1])
    y, mag = reference(x, values, scale, second, group, bias)
    check_close(outs[0], y, mag)


def test_bf16_model_and_batched_input():
    values, scale, second = checkpoint(16, 32, 16, seed=7)
    sch, layer = build(values, scale, second, True, 16, dtype=torch.bfloat16)
    copy_into(layer, tensors_for(values, scale, second, True))
    sch.process_weights_after_loading(layer)
    assert layer.weight_scale.dtype == torch.float32  # the A8W4 matmul's scale operand
    x = uniform(8, (2, 3, 32), -1, 1).to(torch.bfloat16)
    y = sch.apply(layer, x)
    assert y.shape == (2, 3, 16) and y.dtype == torch.bfloat16
    real, mag = reference(x.reshape(6, 32).float(), values, scale, second, 16)
    check_close(y.reshape(6, 16), real, mag, rtol=2e-2)


def test_group_size_defaults_to_256_and_version_is_checked():
    sch = scheme("W4A8_DYNAMIC", "linear", {}, PREFIX)
    assert (sch.group_size, sch.packed) == (256, False)
    assert scheme("W4A8_DYNAMIC", "linear", {"version": "1.0.0"}, PREFIX).packed
    with pytest.raises(DescriptionError, match=r"version '2\.0\.0'.*'0', '1\.0\.0'"):
        scheme("W4A8_DYNAMIC", "linear", {"version": "2.0.0"}, PREFIX)
    with pytest.raises(DescriptionError, match="group_size"):
        scheme("W4A8_DYNAMIC", "linear", {"group_size": -4}, PREFIX)
    with pytest.raises(DescriptionError, match=f"{PREFIX}.*group_size 256 does not divide"):
        scheme("W4A8_DYNAMIC", "linear", {}, PREFIX).create_weights(
            torch.nn.Module(), 384, [8], 384, 8, torch.float32, column_loader)
    with pytest.raises(QuantTensorError, match=f"{PREFIX}.*multiple of 8"):
        scheme("W4A8_DYNAMIC", "linear", {}, PREFIX).create_weights(
            torch.nn.Module(), 256, [12], 256, 12, torch.float32, column_loader)


def test_packed_merged_column_layer_loads_per_shard():
    """gate_up_proj: each shard's packed rows land at half its output offset."""
    gate, scale_g, second_g = checkpoint(8, 16, 8, seed=11)
    up, scale_u, second_u = checkpoint(16, 16, 8, seed=12)

    def merged(param, loaded, shard_id):
        offset = [0, 8][shard_id]
        param.load_merged_column_weight(loaded, shard_offset=offset, shard_size=[8, 16][shard_id])

    values = torch.cat([gate, up])
    scale, second = torch.cat([scale_g, scale_u]), torch.cat([second_g, second_u])
    sch, layer = build(values, scale, second, True, 8, widths=[8, 16], loader=merged)
    for shard, (v, s, s2) in enumerate([(gate, scale_g, second_g), (up, scale_u, second_u)]):
        for name, t in tensors_for(v, s, s2, True).items():
            getattr(layer, name).weight_loader(getattr(layer, name), t, shard)
    sch.process_weights_after_loading(layer)
    ref_sch, ref_layer = build(values, scale, second, False, 8, widths=[8, 16])
    copy_into(ref_layer, tensors_for(values, scale, second, False))
    ref_sch.process_weights_after_loading(ref_layer)
    assert torch.equal(layer.weight, ref_layer.weight)
    assert torch.equal(layer.weight_scale, ref_layer.weight_scale)


def test_row_parallel_scale_bias_has_16_columns(monkeypatch):
    monkeypatch.setattr(w4a8_dynamic, "_is_row_parallel", lambda layer: True)
    values, scale, second = checkpoint(8, 16, 8, seed=3)
    sch, layer = build(values, scale, second, True, 8)
    assert layer.scale_bias.shape == (8, 16)
    tensors = tensors_for(values, scale, second, True, bias_cols=16)
    copy_into(layer, tensors)
    sch.process_weights_after_loading(layer)
    assert layer.scale_bias.shape == (8,)
    assert torch.allclose(layer.scale_bias, tensors["scale_bias"].sum(1), rtol=1e-5)


def test_scale_bias_that_disagrees_with_the_weights_is_refused():
    values, scale, second = checkpoint(8, 16, 8, seed=4)
    sch, layer = build(values, scale, second, True, 8)
    tensors = tensors_for(values, scale, second, True)
    tensors["scale_bias"][3] += 1.0
    copy_into(layer, tensors)
    with pytest.raises(QuantTensorError, match=r"scale_bias.*channel 3, but 8 \* sum_k w"):
        sch.process_weights_after_loading(layer)


# --------------------------------------------------------------------------- bad input

def _loaded_layer(packed=False, group=8, **replace):
    values, scale, second = checkpoint(8, 16, group, seed=5)
    sch, layer = build(values, scale, second, packed, group)
    tensors = tensors_for(values, scale, second, packed)
    for name, t in replace.items():
        if t.shape == tensors[name].shape:
            tensors[name] = t
        else:  # a loader that swapped in a tensor of another shape
            tensors.pop(name)
            getattr(layer, name).data = t
    copy_into(layer, tensors)
    return sch, layer


@pytest.mark.parametrize("packed, name, bad, match", [
    (False, "weight_scale", torch.full((8, 1), float("nan")), "non-finite"),
    (False, "weight_scale", torch.zeros(8, 1), "zero"),
    (True, "weight_scale_second", torch.zeros(8, 2).index_fill_(1, torch.tensor([0]), 1.0),
     "zero"),
    (False, "weight_scale_second", torch.ones(8, 3), r"shape \(8, 3\); expected \(8, 2\)"),
    (False, "weight_offset", torch.ones(8, 1), "non-zero offset"),
    (True, "weight_offset_second", torch.full((8, 2), 2.0), "non-zero offset"),
    (False, "weight", torch.full((8, 16), 9, dtype=torch.int8), r"outside \[-8, 7\]"),
    (True, "weight", torch.zeros(8, 16, dtype=torch.int8), r"shape \(8, 16\); expected \(4, 16\)"),
    (True, "scale_bias", torch.full((8, 1), float("inf")), "non-finite"),
])
def test_bad_tensors_raise_naming_the_tensor_and_layer(packed, name, bad, match):
    sch, layer = _loaded_layer(packed, **{name: bad})
    with pytest.raises(QuantTensorError, match=match) as err:
        sch.process_weights_after_loading(layer)
    assert f"{PREFIX}.{name}" in str(err.value) and f"'{PREFIX}'" in str(err.value)


def test_bad_channel_of_a_fused_layer_names_its_shard():
    values, scale, second = checkpoint(16, 16, 8, seed=9)
    sch, layer = build(values, scale, second, False, 8, widths=[8, 8])
    sch.bind_checkpoint(("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"))
    scale = scale.clone()
    scale[12] = 0.0
    copy_into(layer, tensors_for(values, scale, second, False))
    with pytest.raises(QuantTensorError, match=r"up_proj\.weight_scale' holds a zero"):
        sch.process_weights_after_loading(layer)


def test_a_group_size_that_does_not_match_the_file_fails_loudly():
    """The description says G = 8 but the file is per-channel: the never-loaded per-group
    scales stay NaN and loading fails naming them (instead of computing with garbage)."""
    values, scale, _ = checkpoint(8, 16, 0, seed=4)
    sch, layer = build(values, scale, None, False, 8)
    copy_into(layer, tensors_for(values, scale, None, False))
    with pytest.raises(QuantTensorError, match=r"weight_scale_second' holds a non-finite value "
                                               r"\(nan\).*never loaded"):
        sch.process_weights_after_loading(layer)


def test_prequantized_rows_from_a_fused_norm_give_the_same_output():
    """int8 rows with their attached per-token scale (quantization/norm_quant.py) skip the
    scheme's own quantisation: the output equals the float input's, bit for bit."""
    from vllm_ascend.device import ops
    from vllm_ascend.quantization import norm_quant

    values, scale, second = checkpoint(16, 32, 8, 3)
    sch, layer = build(values, scale, second, True, 8)
    for name, t in tensors_for(values, scale, second, True).items():
        getattr(layer, name).weight_loader(getattr(layer, name), t)
    sch.process_weights_after_loading(layer)
    x = uniform(9, (5, 32), -2.0, 2.0)
    xq, xs = ops.npu_dynamic_quant(x)
    got = sch.apply(layer, norm_quant.attach(xq, xs))
    assert got.dtype == torch.float32 and torch.equal(got, sch.apply(layer, x))
