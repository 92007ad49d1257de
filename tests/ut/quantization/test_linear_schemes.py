"""The linear schemes (W8A8, W8A8_DYNAMIC, W8A16, W4A16) against float64 math.

Each case builds a real vLLM linear layer (unfused RowParallelLinear, or a fused
MergedColumnParallelLinear with two shards) quantized through AscendQuantConfig, loads
ModelSlim tensors with vLLM's own weight loaders, runs ``process_weights_after_loading`` and
compares the layer's output with the scheme's math in float64 on the dequantized weights.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.ut.quantization.layers import MERGED, ROW, build, load, make_tensors, oracle
from vllm_ascend.device.reference.quant import get_npu_format
from vllm_ascend.quantization.errors import QuantTensorError
from vllm_ascend.quantization.methods.w8a8 import rederive_for

pytestmark = pytest.mark.usefixtures("vllm_ctx")

SCHEMES = ["W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16"]


def run_case(quant_type, prefix, m, k, widths, seed, *, group=0, bias=False,
             dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n = sum(widths)
    b = torch.randn(n, generator=gen) * 0.1 if bias else None
    layer = build(prefix, quant_type, k, widths, dtype=dtype, bias=bias, group=group)
    tensors, w_deq = make_tensors(prefix, quant_type, k, widths, gen, group=group,
                                  bias=b if quant_type == "W8A8" else None)
    load(layer, prefix, tensors)
    if bias:
        layer.bias.data.copy_(b.to(dtype))
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(m, k, generator=gen)
    y = layer(x.to(dtype))
    ref, tol = oracle(quant_type, x.to(dtype), w_deq, b)
    return layer, y, ref, tol


@pytest.mark.parametrize("quant_type", SCHEMES)
@given(m=st.integers(1, 64), k=st.sampled_from([16, 32, 48, 64, 96]),
       n=st.sampled_from([8, 16, 24, 40]), seed=st.integers(0, 2**16),
       fused=st.booleans(), bias=st.booleans())
def test_apply_matches_float64(quant_type, m, k, n, seed, fused, bias):
    widths = [n, 8] if fused else [n]
    layer, y, ref, tol = run_case(quant_type, MERGED if fused else ROW, m, k, widths, seed,
                                  bias=bias)
    assert y.shape == (m, sum(widths)) and y.dtype == torch.float32
    err = (y.double() - ref).abs()
    assert bool((err <= tol).all()), f"max excess {(err - tol).max().item():.3e}"


@pytest.mark.parametrize("quant_type", ["W8A16", "W4A16"])
@given(m=st.integers(1, 64), groups=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_weight_only_per_group(quant_type, m, groups, seed):
    k = 64
    layer, y, ref, tol = run_case(quant_type, MERGED, m, k, [16, 8], seed, group=k // groups)
    assert tuple(layer.weight_scale.shape) == (groups, 24)
    assert bool(((y.double() - ref).abs() <= tol).all())


@pytest.mark.parametrize("quant_type", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(quant_type, dtype):
    _, y, ref, _ = run_case(quant_type, MERGED, 9, 64, [16, 8], 7, bias=True, dtype=dtype)
    assert y.dtype == dtype
    rel = (y.double() - ref).abs().max() / ref.abs().max()
    assert rel < 2e-2, rel


def test_processed_layout():
    layer, *_ = run_case("W8A8_DYNAMIC", MERGED, 3, 32, [16, 8], 1)
    assert layer.weight.dtype == torch.int8 and tuple(layer.weight.shape) == (32, 24)
    assert get_npu_format(layer.weight) == 29 and layer.weight_scale.shape == (24,)
    assert not hasattr(layer, "weight_offset")
    layer, *_ = run_case("W4A16", ROW, 3, 32, [16], 1)
    assert layer.weight.dtype == torch.int32 and tuple(layer.weight.shape) == (32, 2)
    layer, *_ = run_case("W8A8", ROW, 3, 32, [16], 1, dtype=torch.float16)
    assert layer.deq_scale.dtype == torch.int64  # npu_trans_quant_param for fp16 output
    assert layer.act_scale.shape == (32,) and layer.quant_bias.dtype == torch.int32


def test_w8a8_bias_folded_not_added_twice():
    """ModelSlim folds the float bias into quant_bias; the layer's bias must not add again."""
    _, y, ref, tol = run_case("W8A8", ROW, 5, 32, [16], 3, bias=True)
    assert bool(((y.double() - ref).abs() <= tol).all())


# ------------------------------------------------------------------ W8A8 shard re-derivation


def test_rederive_identity_when_shards_agree():
    w = torch.randint(-127, 128, (12, 20), dtype=torch.int8)
    deq, qb = torch.rand(12) + 0.1, torch.randint(-1000, 1000, (12,), dtype=torch.int32)
    s, o = torch.tensor([0.5, 0.5]), torch.tensor([3.0, 3.0])
    d2, q2 = rederive_for(0.5, 3.0, w, [8, 4], s, o, deq, qb)
    assert torch.equal(d2, deq) and torch.equal(q2, qb)


@given(seed=st.integers(0, 2**16))
def test_rederive_preserves_the_layer(seed):
    """Shards calibrated differently, run with one (s*, o*): same float function up to the
    rounding of the re-derived bias and the activation grid."""
    gen = torch.Generator().manual_seed(seed)
    widths, k = [6, 5], 24
    w = torch.randint(-127, 128, (11, k), generator=gen, dtype=torch.int8)
    s_w = torch.rand(11, generator=gen) * 0.01 + 1e-3
    s_x = torch.tensor([0.02, 0.05])
    o_x = torch.tensor([2.0, -3.0])
    b = torch.randn(11, generator=gen)
    shard = torch.tensor([0] * 6 + [1] * 5)
    deq = (s_x[shard] * s_w).float()
    qb = (torch.round(b.double() / deq.double()) - o_x[shard].double()
          * w.double().sum(1)).to(torch.int32)
    d2, q2 = rederive_for(0.05, -3.0, w, widths, s_x, o_x, deq, qb)
    # The bias each channel adds when the input is exactly zero: d (q + o* sum w) = b.
    b_back = d2.double() * (q2.double() + (-3.0) * w.double().sum(1))
    assert torch.allclose(b_back, b.double(), atol=float(d2.max()))
    assert torch.allclose(d2.double(), 0.05 * s_w.double(), rtol=1e-6)


# ------------------------------------------------------------------ bad tensors


def load_modified(quant_type, prefix, widths, mutate, k=32):
    gen = torch.Generator().manual_seed(0)
    layer = build(prefix, quant_type, k, widths)
    tensors, _ = make_tensors(prefix, quant_type, k, widths, gen)
    mutate(tensors)
    load(layer, prefix, tensors)
    layer.quant_method.process_weights_after_loading(layer)


@pytest.mark.parametrize("value,word", [(float("nan"), "non-finite"), (0.0, "zero")])
def test_bad_scale_names_the_shard(value, word):
    def mutate(t):
        t["model.layers.0.mlp.up_proj.weight_scale"][3, 0] = value
    with pytest.raises(QuantTensorError, match=rf"up_proj\.weight_scale'.*{word}.*channel 3"):
        load_modified("W8A8_DYNAMIC", MERGED, [16, 8], mutate)


def test_misshapen_scale():
    def mutate(t):
        t[f"{ROW}.deq_scale"] = torch.ones(7)
    with pytest.raises(QuantTensorError, match=r"o_proj\.deq_scale' has shape \(7,\)"):
        load_modified("W8A8", ROW, [16], mutate)


def test_wrong_dtype():
    def mutate(t):
        t[f"{ROW}.weight"] = t[f"{ROW}.weight"].float()
    with pytest.raises(QuantTensorError, match=r"o_proj\.weight' has dtype torch.float32"):
        load_modified("W8A16", ROW, [16], mutate)


def test_missing_shard_tensor():
    def mutate(t):
        del t["model.layers.0.mlp.gate_proj.weight_offset"]
    with pytest.raises(QuantTensorError, match=r"gate_proj\.weight_offset' is missing"):
        load_modified("W8A16", MERGED, [16, 8], mutate)


def test_nonzero_weight_offset_rejected_for_symmetric():
    def mutate(t):
        t[f"{ROW}.weight_offset"][2, 0] = 1.0
    with pytest.raises(QuantTensorError, match=r"non-zero offset.*channel 2"):
        load_modified("W8A8_DYNAMIC", ROW, [16], mutate)


def test_int4_range():
    def mutate(t):
        t[f"{ROW}.weight"][1, 5] = 9
    with pytest.raises(QuantTensorError, match=r"holds 9 at output channel 1.*\[-8, 7\]"):
        load_modified("W4A16", ROW, [16], mutate)


def test_input_offset_must_be_int8():
    def mutate(t):
        t[f"{ROW}.input_offset"] = torch.tensor([0.5])
    with pytest.raises(QuantTensorError, match=r"input_offset' .*is 0.5"):
        load_modified("W8A8", ROW, [16], mutate)


def test_int64_deq_scale_is_decoded():
    """fp16 ModelSlim checkpoints store deq_scale as int64 holding the fp32 bit pattern."""
    def mutate(t):
        d = t[f"{ROW}.deq_scale"]
        t[f"{ROW}.deq_scale"] = d.view(torch.int32).to(torch.int64)
    load_modified("W8A8", ROW, [16], mutate)  # decodes, validates, no error


def test_row_parallel_rank_above_zero_drops_quant_bias():
    gen = torch.Generator().manual_seed(0)
    layer = build(ROW, "W8A8", 32, [16])
    tensors, _ = make_tensors(ROW, "W8A8", 32, [16], gen)
    load(layer, ROW, tensors)
    layer.tp_rank = 1
    layer.quant_method.process_weights_after_loading(layer)
    assert not bool(layer.quant_bias.any())
