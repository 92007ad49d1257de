"""W8A8_DYNAMIC / W4A8_DYNAMIC experts vs a float64 per-expert reference on dequantised
weights, both W4A8 checkpoint layouts, and vLLM's own expert weight loader.

The float64 reference redoes every quantisation step (per-token int8 of the input and of
the SwiGLU output, round half to even) in float64. Inputs are built on the int8 grid so the
first quantisation is exact; the second may round differently in fp32 within a hair of a
tie, and the tolerance allows one quantisation step for each such element.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

from vllm_ascend.device import ops
from vllm_ascend.quantization.errors import DescriptionError, QuantTensorError
from vllm_ascend.quantization.methods._int4 import decode_scale, pack_int4_pairs

from ._w4_helpers import copy_into, gen, int4_values, scheme, uniform

SEEDS = st.integers(0, 2**31 - 1)
PREFIX = "model.layers.2.mlp.experts"


# ----------------------------------------------------------------------- checkpoints

def int8_values(seed, shape):
    return torch.randint(-127, 128, shape, generator=gen(seed), dtype=torch.int8)


def moe_checkpoint(e, h, i, group, seed, int4=True):
    """Checkpoint-layout values and scales: w13 (E, 2I, H), w2 (E, H, I)."""
    values = int4_values if int4 else int8_values
    ck = {}
    for s, (stem, out, inp) in enumerate((("w13", 2 * i, h), ("w2", h, i))):
        ck[stem] = values(seed + 10 * s, (e, out, inp))
        ck[f"{stem}_scale"] = uniform(seed + 10 * s + 1, (e, out, 1), 1e-3, 4e-3)
        ck[f"{stem}_second"] = (uniform(seed + 10 * s + 2, (e, out, inp // group), 0.5, 2.0)
                                if group else None)
    return ck


def effective_scale(ck, stem, group):
    """(E, out, in) float64 scale of every weight element: s_c * s_g."""
    s = ck[f"{stem}_scale"].double()
    second = ck[f"{stem}_second"]
    return s if second is None else s * second.double().repeat_interleave(group, dim=2)


def w4a8_tensors(ck, group, packed):
    """The tensors vLLM's loader leaves in the layer's parameters (both layouts)."""
    t = {}
    for stem in ("w13", "w2"):
        t[f"{stem}_weight"] = pack_int4_pairs(ck[stem], dim=1) if packed else ck[stem].clone()
        t[f"{stem}_weight_scale"] = ck[f"{stem}_scale"]
        t[f"{stem}_weight_offset"] = torch.zeros_like(ck[f"{stem}_scale"])
        if group:
            t[f"{stem}_weight_scale_second"] = ck[f"{stem}_second"]
            t[f"{stem}_weight_offset_second"] = torch.zeros_like(ck[f"{stem}_second"])
    if packed:  # the quantizer's bias: 8 * sum_k w * s, w2 as 16 partial sums over I
        terms13 = 8 * ck["w13"].double() * effective_scale(ck, "w13", group)
        t["w13_scale_bias"] = terms13.sum(dim=2, keepdim=True).float()
        terms2 = 8 * ck["w2"].double() * effective_scale(ck, "w2", group)
        t["w2_scale_bias"] = torch.stack([c.sum(dim=2) for c in
                                          torch.tensor_split(terms2, 16, dim=2)], dim=2).float()
    return t


def w8a8_tensors(ck):
    t = {}
    for stem in ("w13", "w2"):
        t[f"{stem}_weight"] = ck[stem].clone()
        t[f"{stem}_weight_scale"] = ck[f"{stem}_scale"]
        t[f"{stem}_weight_offset"] = torch.zeros_like(ck[f"{stem}_scale"])
    return t


def build(quant_type, desc, e, h, i, dtype=torch.float32, layer=None, **attrs):
    sch = scheme(quant_type, "moe", desc, PREFIX)
    layer = torch.nn.Module() if layer is None else layer
    sch.create_weights(layer, e, h, i, dtype, **attrs)
    return sch, layer


def desc_for(group, packed):
    return {"group_size": group} | ({"version": "1.0.0"} if packed else {})


def processed(quant_type, desc, ck, tensors, dtype=torch.float32):
    e, out, h = ck["w13"].shape
    sch, layer = build(quant_type, desc, e, h, out // 2, dtype)
    copy_into(layer, tensors)
    sch.process_weights_after_loading(layer)
    return sch, layer


# ----------------------------------------------------------------- float64 reference

def dyn_int8(v):
    """float64 per-row int8: (q, scale, near-tie mask)."""
    s = v.abs().amax(dim=-1, keepdim=True) / 127 if v.shape[-1] else v.new_ones(v.shape[0], 1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    r = v / s
    tie = (r - r.floor() - 0.5).abs() < 1e-3
    return torch.round(r).clamp(-127, 127), s, tie


def reference(x, counts, w13, w2, int4):
    """Per expert: dequantised weights ``w13 (E, H, 2I)``, ``w2 (E, I, H)`` (K, N layout,
    float64). Returns (y, magnitude, slack for near-tie flips); rows past the total are 0."""
    m, h = x.shape
    y, mag, slack = (torch.zeros(m, h, dtype=torch.float64) for _ in range(3))
    shift = 8 if int4 else 0  # the A8W4 product carries an (x - 8) term: fp32 cancellation
    lo = 0
    for e, c in enumerate(counts):
        if c:
            q1, s1, _ = dyn_int8(x[lo:lo + c].double())
            hid = (q1 @ w13[e]) * s1
            half = hid.shape[1] // 2
            a = F.silu(hid[:, :half]) * hid[:, half:]
            q2, s2, tie = dyn_int8(a)
            y[lo:lo + c] = (q2 @ w2[e]) * s2
            mag[lo:lo + c] = ((q2.abs() + shift) @ w2[e].abs()) * s2
            slack[lo:lo + c] = (tie.double() @ w2[e].abs()) * s2
        lo += c
    return y, mag, slack


def on_int8_grid(seed, m, h):
    """Rows whose per-token int8 quantisation is exact: q * 2^-j with max |q| = 127."""
    q = int8_values(seed, (m, h)).float()
    if h:
        q[:, 0] = 127 * torch.where(torch.rand(m, generator=gen(seed + 1)) < 0.5, -1.0, 1.0)
    steps = 2.0 ** -torch.randint(3, 9, (m, 1), generator=gen(seed + 2)).float()
    return q * steps


@st.composite
def routing(draw, max_rows=64):
    """(E, per-expert counts, rows past the total): empty experts, one hot expert, ..."""
    e = draw(st.integers(1, 4))
    if draw(st.booleans()):
        counts = [0] * e
        counts[draw(st.integers(0, e - 1))] = draw(st.integers(0, max_rows))
    else:
        counts = draw(st.lists(st.integers(0, max_rows // e), min_size=e, max_size=e))
    return e, counts, draw(st.integers(0, 2))


def check(y, real, mag, slack, rtol=1e-4):
    err = (y.double() - real).abs()
    bound = rtol * mag + slack + 1e-12
    assert bool((err <= bound).all()), float((err - bound).max())


# ------------------------------------------------------------------------ W8A8_DYNAMIC

@given(route=routing(), h=st.sampled_from([8, 16, 24]), i=st.sampled_from([4, 8, 12]),
       seed=SEEDS)
def test_w8a8_experts_match_float64(route, h, i, seed):
    e, counts, extra = route
    ck = moe_checkpoint(e, h, i, 0, seed, int4=False)
    sch, layer = processed("W8A8_DYNAMIC", {}, ck, w8a8_tensors(ck))
    m = sum(counts) + extra
    x = on_int8_grid(seed + 5, m, h)
    y = sch.apply_experts(layer, x, torch.tensor(counts))
    w13 = (ck["w13"].double() * ck["w13_scale"].double()).transpose(1, 2)
    w2 = (ck["w2"].double() * ck["w2_scale"].double()).transpose(1, 2)
    real, mag, slack = reference(x, counts, w13, w2, int4=False)
    assert y.shape == (m, h) and y.dtype == torch.float32
    assert not y[sum(counts):].any()  # rows past the total belong to no expert
    check(y, real, mag, slack)


def test_w8a8_processed_layout_and_prequantised_input():
    ck = moe_checkpoint(3, 16, 8, 0, seed=4, int4=False)
    sch, layer = processed("W8A8_DYNAMIC", {}, ck, w8a8_tensors(ck), dtype=torch.bfloat16)
    assert layer.w13_weight.shape == (3, 16, 16) and layer.w2_weight.shape == (3, 8, 16)
    assert layer.w13_weight_scale.dtype == torch.float32
    assert layer.w2_weight_scale.dtype == torch.bfloat16
    assert not hasattr(layer, "w13_weight_offset")
    x = on_int8_grid(7, 9, 16).to(torch.bfloat16)
    counts = torch.tensor([4, 0, 5])
    y = sch.apply_experts(layer, x, counts)
    assert y.dtype == torch.bfloat16
    xq, xs = ops.npu_dynamic_quant(x)
    assert torch.equal(sch.apply_experts(layer, xq, counts, dynamic_scale=xs), y)


# ------------------------------------------------------------------------ W4A8_DYNAMIC

@given(route=routing(), group=st.sampled_from([0, 8]), h8=st.integers(1, 3),
       i8=st.integers(1, 2), packed=st.booleans(), seed=SEEDS)
def test_w4a8_experts_match_float64(route, group, h8, i8, packed, seed):
    e, counts, extra = route
    h, i = 8 * h8, 8 * i8
    ck = moe_checkpoint(e, h, i, group, seed)
    sch, layer = processed("W4A8_DYNAMIC", desc_for(group, packed), ck,
                           w4a8_tensors(ck, group, packed))
    m = sum(counts) + extra
    x = on_int8_grid(seed + 5, m, h)
    y = sch.apply_experts(layer, x, torch.tensor(counts))
    # dequantised with the scales the kernel gets (10-bit mantissa words)
    w13, w2 = (ck[stem].double().transpose(1, 2)
               * decode_scale(getattr(layer, f"{stem}_weight_scale")).double()
               .repeat_interleave(group or ck[stem].shape[2], dim=1)
               for stem in ("w13", "w2"))
    real, mag, slack = reference(x, counts, w13, w2, int4=True)
    assert y.shape == (m, h) and not y[sum(counts):].any()
    check(y, real, mag, slack)


@given(group=st.sampled_from([0, 8, 16]), e=st.integers(1, 3), seed=SEEDS)
def test_w4a8_both_layouts_give_one_internal_form(group, e, seed):
    h, i = 32, 16
    ck = moe_checkpoint(e, h, i, group, seed)
    forms, outs = [], []
    x, counts = on_int8_grid(seed + 3, 7, h), torch.tensor([7] + [0] * (e - 1))
    for packed in (False, True):
        sch, layer = processed("W4A8_DYNAMIC", desc_for(group, packed), ck,
                               w4a8_tensors(ck, group, packed))
        forms.append({n: p.detach().clone() for n, p in layer.named_parameters()})
        outs.append(sch.apply_experts(layer, x, counts))
    assert forms[0].keys() == forms[1].keys() == {
        "w13_weight", "w2_weight", "w13_weight_scale", "w2_weight_scale", "w13_scale_bias",
        "w2_scale_bias"}
    for name in forms[0]:
        assert torch.equal(forms[0][name], forms[1][name]), name
    g13, g2 = (h // group, i // group) if group else (1, 1)
    shapes = {"w13_weight": ((e, h, 2 * i // 8), torch.int32),
              "w2_weight": ((e, i, h // 8), torch.int32),
              "w13_weight_scale": ((e, g13, 2 * i), torch.int64),
              "w2_weight_scale": ((e, g2, h), torch.int64),
              "w13_scale_bias": ((e, 2 * i), torch.float32),
              "w2_scale_bias": ((e, h), torch.float32)}
    for name, (shape, dtype) in shapes.items():
        assert (tuple(forms[0][name].shape), forms[0][name].dtype) == (shape, dtype), name
    # the kernel scale is s_c * s_g to the 10-bit mantissa the device keeps
    s = effective_scale(ck, "w13", group)[..., ::group or h].transpose(1, 2)
    kernel = decode_scale(forms[0]["w13_weight_scale"]).double()
    assert bool(((kernel - s).abs() <= 2.0**-11 * s).all())
    assert torch.equal(outs[0], outs[1])


def test_w4a8_bf16_model_and_prequantised_input():
    ck = moe_checkpoint(2, 16, 8, 8, seed=9)
    sch, layer = processed("W4A8_DYNAMIC", desc_for(8, True), ck, w4a8_tensors(ck, 8, True),
                           dtype=torch.bfloat16)
    x = on_int8_grid(3, 6, 16).to(torch.bfloat16)
    counts = torch.tensor([2, 3])
    y = sch.apply_experts(layer, x, counts)
    assert y.dtype == torch.bfloat16 and y.shape == (6, 16) and not y[5:].any()
    xq, xs = ops.npu_dynamic_quant(x)
    assert torch.equal(sch.apply_experts(layer, xq, counts, dynamic_scale=xs), y)
    w13, w2 = (ck[s].double().transpose(1, 2) * decode_scale(getattr(layer, f"{s}_weight_scale"))
               .double().repeat_interleave(8, dim=1) for s in ("w13", "w2"))
    real, mag, slack = reference(x.float(), counts.tolist(), w13, w2, int4=True)
    check(y[:5], real[:5], mag[:5], slack[:5], rtol=3e-2)


def test_w4a8_missing_group_size_means_256():
    sch = scheme("W4A8_DYNAMIC", "moe", {}, PREFIX)
    assert sch.group_size == 256 and not sch.packed
    with pytest.raises(DescriptionError, match="group_size 256 does not divide"):
        sch.create_weights(torch.nn.Module(), 2, 256, 128, torch.float32)


# ---------------------------------------------------------------------------- bad input

W4A8_BAD = [
    (True, "w13_weight_scale", lambda t: t.index_fill_(1, torch.tensor([3]), float("nan")),
     "non-finite"),
    (True, "w2_weight_scale_second", lambda t: t.index_fill_(2, torch.tensor([0]), 0.0), "zero"),
    (False, "w13_weight_offset", lambda t: t.fill_(1.0), "non-zero offset"),
    (False, "w2_weight_offset_second", lambda t: t.fill_(-1.0), "non-zero offset"),
    (False, "w2_weight", lambda t: t.fill_(8), r"outside \[-8, 7\]"),
    (True, "w2_scale_bias", lambda t: t.mul_(1.5), "8 \\* sum_k w \\* scale"),
    (True, "w13_scale_bias", lambda t: t.neg_(), "8 \\* sum_k w \\* scale"),
    (True, "w13_scale_bias", lambda t: t.fill_(float("inf")), "non-finite"),
]


@pytest.mark.parametrize("packed, name, corrupt, match", W4A8_BAD)
def test_w4a8_bad_tensors_raise_naming_the_tensor(packed, name, corrupt, match):
    ck = moe_checkpoint(2, 16, 8, 8, seed=1)
    tensors = w4a8_tensors(ck, 8, packed)
    corrupt(tensors[name])
    sch, layer = build("W4A8_DYNAMIC", desc_for(8, packed), 2, 16, 8)
    copy_into(layer, tensors)
    with pytest.raises(QuantTensorError, match=match) as err:
        sch.process_weights_after_loading(layer)
    assert f"{PREFIX}.{name}" in str(err.value)


def test_bad_shapes_and_inputs():
    ck = moe_checkpoint(2, 16, 8, 8, seed=2)
    sch, layer = build("W4A8_DYNAMIC", desc_for(8, False), 2, 16, 8)
    tensors = w4a8_tensors(ck, 8, False)
    del tensors["w2_weight_scale_second"]
    copy_into(layer, tensors)
    layer.w2_weight_scale_second.data = torch.ones(2, 16, 2)
    with pytest.raises(QuantTensorError, match=r"w2_weight_scale_second' has shape \(2, 16, 2\)"
                                               r"; expected \(2, 16, 1\)"):
        sch.process_weights_after_loading(layer)

    ck8 = moe_checkpoint(2, 8, 4, 0, seed=3, int4=False)
    sch, layer = processed("W8A8_DYNAMIC", {}, ck8, w8a8_tensors(ck8))
    x = torch.ones(3, 8)
    with pytest.raises(QuantTensorError, match=r"group_list must be \(2,\)"):
        sch.apply_experts(layer, x, torch.tensor([1, 1, 1]))
    with pytest.raises(QuantTensorError, match="without dynamic_scale"):
        sch.apply_experts(layer, x.to(torch.int8), torch.tensor([1, 2]))
    with pytest.raises(QuantTensorError, match="must be int8"):
        sch.apply_experts(layer, x, torch.tensor([1, 2]), dynamic_scale=torch.ones(3))

    bad = w8a8_tensors(ck8)
    bad["w2_weight_scale"][1, 5, 0] = float("nan")
    sch, layer = build("W8A8_DYNAMIC", {}, 2, 8, 4)
    copy_into(layer, bad)
    with pytest.raises(QuantTensorError, match=r"w2_weight_scale' holds a non-finite value "
                                               r"\(nan\) at index \(1, 5, 0\)"):
        sch.process_weights_after_loading(layer)


# ------------------------------------------------------- vLLM's expert weight loader

_LOADER_PARTS = ("weight_loader", "_load_w13", "_load_w2", "_load_per_channel_weight_scale",
                 "_load_model_weight_or_group_weight_scale", "_load_per_tensor_weight_scale",
                 "_get_hidden_dim", "_narrow_expert_data_for_padding", "_to_scalar",
                 "_load_single_value", "_map_global_expert_id_to_local_expert_id")
#: RoutedExperts' loading code on a bare module (no vLLM config / distributed state needed).
LoaderOnly = type("LoaderOnly", (torch.nn.Module,),
                  {name: vars(RoutedExperts)[name] for name in _LOADER_PARTS})


def loader_layer(tp_rank=0, tp_size=1):
    layer = LoaderOnly()
    layer.quant_config, layer.quant_method = None, SimpleNamespace()
    layer._fused_shared_expert_quantizer, layer._loaded_expert_biases = None, set()
    layer.expert_map_manager = SimpleNamespace(map_global_to_local=lambda e: e)
    layer.moe_config = SimpleNamespace(
        tp_rank=tp_rank, tp_size=tp_size, is_act_and_mul=True, tp_shard_with_padding=False,
        moe_parallel_config=SimpleNamespace(tp_size=tp_size))
    return layer


def checkpoint_per_expert(ck, group, packed):
    """(name suffix, shard id, expert id, tensor) as stored per expert in a ModelSlim file."""
    e_count = ck["w13"].shape[0]
    full = w4a8_tensors(ck, group, packed) if group is not None else w8a8_tensors(ck)
    out = []
    for e in range(e_count):
        for suffix in ("weight", "weight_scale", "weight_offset", "weight_scale_second",
                       "weight_offset_second", "scale_bias"):
            for stem in ("w13", "w2"):
                name = f"{stem}_{suffix}"
                if name not in full:
                    continue
                t = full[name][e]
                if stem == "w2":
                    out.append((name, "w2", e, t))
                    continue
                rows = t.shape[0] // 2  # gate rows, then up rows (packed: half as many)
                out += [(name, "w1", e, t[:rows]), (name, "w3", e, t[rows:])]
    return out


@pytest.mark.parametrize("quant_type, group, packed", [
    ("W8A8_DYNAMIC", None, False), ("W4A8_DYNAMIC", 8, True), ("W4A8_DYNAMIC", 0, True),
    ("W4A8_DYNAMIC", 8, False)])
def test_vllm_expert_loader_fills_the_parameters(quant_type, group, packed):
    e, h, i = 2, 16, 8
    ck = moe_checkpoint(e, h, i, group or 0, seed=6, int4=group is not None)
    desc = {} if group is None else desc_for(group, packed)
    layer = loader_layer()
    sch, _ = build(quant_type, desc, e, h, i, layer=layer, weight_loader=layer.weight_loader)
    for name, shard, expert, t in checkpoint_per_expert(ck, group, packed):
        param = getattr(layer, name)
        assert param.weight_loader(param, t, f"{PREFIX}.{name}", shard_id=shard,
                                   expert_id=expert, return_success=True), name
    sch.process_weights_after_loading(layer)
    ref_sch, ref = processed(quant_type, desc, ck, w4a8_tensors(ck, group, packed)
                             if group is not None else w8a8_tensors(ck))
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(layer, name), p), name


@pytest.mark.parametrize("tp_rank", [0, 1])
def test_vllm_loader_with_tensor_parallel_experts(tp_rank):
    """TP=2: each rank holds half of I; its share of the 16 w2 partial sums must match."""
    e, h, i_full, group = 2, 16, 32, 8
    ck = moe_checkpoint(e, h, i_full, group, seed=8)
    layer = loader_layer(tp_rank, 2)
    sch, _ = build("W4A8_DYNAMIC", desc_for(group, True), e, h, i_full // 2, layer=layer,
                   weight_loader=layer.weight_loader)
    for name, shard, expert, t in checkpoint_per_expert(ck, group, True):
        param = getattr(layer, name)
        param.weight_loader(param, t, f"{PREFIX}.{name}", shard_id=shard, expert_id=expert)
    sch.process_weights_after_loading(layer)  # the w2_scale_bias share check passes
    # the rank's slice of the same checkpoint, loaded directly in the legacy layout
    half = slice(tp_rank * i_full // 2, (tp_rank + 1) * i_full // 2)
    gate_up = lambda t: torch.cat([t[:, :i_full][:, half], t[:, i_full:][:, half]], dim=1)
    part = {"w13": gate_up(ck["w13"]), "w13_scale": gate_up(ck["w13_scale"]),
            "w13_second": gate_up(ck["w13_second"]), "w2": ck["w2"][:, :, half],
            "w2_scale": ck["w2_scale"],
            "w2_second": ck["w2_second"][:, :, tp_rank * 2:(tp_rank + 1) * 2]}
    _, ref = processed("W4A8_DYNAMIC", desc_for(group, False), part,
                       w4a8_tensors(part, group, False))
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(layer, name), p), name


def test_w4a8_missing_scale_bias_fails_loudly():
    ck = moe_checkpoint(2, 16, 8, 8, seed=5)
    tensors = w4a8_tensors(ck, 8, True)
    del tensors["w2_scale_bias"]
    sch, layer = build("W4A8_DYNAMIC", desc_for(8, True), 2, 16, 8)
    copy_into(layer, tensors)
    with pytest.raises(QuantTensorError, match=r"w2_scale_bias' holds a non-finite.*never loaded"):
        sch.process_weights_after_loading(layer)
