"""compressed-tensors W4A8_DYNAMIC (int4 group/channel weights, int8 token-dynamic activations
in the config) loaded through the adapter onto the plugin's W4A8_DYNAMIC linear scheme.

Checkpoint tensors are written by the ``compressed_tensors`` library itself
(``PackedQuantizationCompressor.compress`` with ``calculate_qparams`` scales, as
llm-compressor does) or by the repo's writer (``tools/quantize_ct.layer_tensors``). The
scheme quantizes activations per token to int8 (as the config says), so the oracle is
float64 ``xq @ W_deq^T`` on the dequantized weight, with the tolerance of the W4A8 scheme
tests (``1e-5 * sum |x| |W|``).
"""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization import QuantizationScheme as Scheme
from compressed_tensors.quantization.utils import calculate_qparams
from hypothesis import given
from hypothesis import strategies as st

from tests.ut.quantization.layers import oracle
from tests.ut.quantization.test_compressed_tensors import MLP, TOKEN, ct_config
from vllm_ascend.device.reference import cpu_kernels
from vllm_ascend.quantization import compressed_tensors_layouts as layouts
from vllm_ascend.quantization.errors import (
    DescriptionError,
    QuantTensorError,
    UnsupportedSchemeError,
)
from vllm_ascend.quantization.methods._int4 import kernel_int4
from vllm_ascend.tools import quantize_ct

GATE, UP, DOWN = f"{MLP}.gate_proj", f"{MLP}.up_proj", f"{MLP}.down_proj"
K = 64


def w4a8_scheme(group: int) -> Scheme:
    weights = QuantizationArgs(num_bits=4, strategy="group", group_size=group, symmetric=True) \
        if group else QuantizationArgs(num_bits=4, strategy="channel", symmetric=True)
    return Scheme(targets=["Linear"], weights=weights, input_activations=TOKEN,
                  format="pack-quantized")


def w4a8_layer(group: int, kind: str = "gate_up", widths=(16, 8), bias=False,
               dtype=torch.float32, k=K):
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    config = ct_config({"g": w4a8_scheme(group)}, fmt="pack-quantized")
    if kind == "gate_up":
        return MergedColumnParallelLinear(k, list(widths), bias=bias, quant_config=config,
                                          prefix=f"{MLP}.gate_up_proj", params_dtype=dtype,
                                          return_bias=False)
    return RowParallelLinear(k, widths[0], bias=bias, quant_config=config, prefix=DOWN,
                             params_dtype=dtype, return_bias=False)


def library_tensors(w: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    """What llm-compressor saves for ``w``: observer scales, then the library's compressor."""
    scheme = w4a8_scheme(group)
    n, k = w.shape
    view = w.reshape(n, k // group, group) if group else w.reshape(n, 1, k)
    scale, _ = calculate_qparams(view.amin(-1), view.amax(-1), scheme.weights)
    return PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)


def writer_tensors(w: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    return quantize_ct.layer_tensors(w, "W4A8_DYNAMIC", group)


def values_of(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = torch.Size(tensors["weight_shape"].tolist())
    return unpack_from_int32(tensors["weight_packed"], 4, shape, packed_dim=1)


def dequantized(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """float64 ``W[n, k] = w[n, k] * s[n, k // G]`` (G = K for channel scales)."""
    q = values_of(tensors).double()
    scale = tensors["weight_scale"].double()
    return q * scale.repeat_interleave(q.shape[1] // scale.shape[1], dim=1)


def load(layer, shards: dict[str, dict[str, torch.Tensor]]) -> None:
    """Feed ``{shard prefix: {name: tensor}}`` through vLLM's loaders, then process."""
    params = dict(layer.named_parameters())
    fused = len(shards) > 1
    for index, tensors in enumerate(shards.values()):
        for name, t in tensors.items():
            if fused:
                params[name].weight_loader(params[name], t, index)
            else:
                params[name].weight_loader(params[name], t)
    layer.quant_method.process_weights_after_loading(layer)


def fast_and_exact(layer, x):
    """The layer's output on the compiled CPU fast path (when built) and the plain path."""
    saved, outs = cpu_kernels.force_exact, []
    try:
        for exact in ((False, True) if cpu_kernels.native_available() else (True,)):
            cpu_kernels.force_exact = exact
            outs.append(layer(x))
    finally:
        cpu_kernels.force_exact = saved
    return outs


# ------------------------------------------------------------------------ loading and math

@pytest.mark.usefixtures("vllm_ctx")
@given(m=st.integers(1, 48), seed=st.integers(0, 2**16), group=st.sampled_from([0, 16, 32]),
       kind=st.sampled_from(["gate_up", "down"]), writer=st.sampled_from(["library", "tool"]),
       bias=st.booleans())
def test_w4a8_adapter_matches_float64(m, seed, group, kind, writer, bias):
    gen = torch.Generator().manual_seed(seed)
    write = library_tensors if writer == "library" else writer_tensors
    widths = (16, 8) if kind == "gate_up" else (24,)
    layer = w4a8_layer(group, kind, widths, bias)
    prefixes = (GATE, UP) if kind == "gate_up" else (DOWN,)
    shards = {p: write(torch.randn(wd, K, generator=gen) / K ** 0.5, group)
              for p, wd in zip(prefixes, widths)}
    b = torch.randn(sum(widths), generator=gen) * 0.1 if bias else None
    if bias:
        layer.bias.data.copy_(b)
    load(layer, shards)

    # exact conversion: the ct values packed for the kernel, the ct scale transposed
    values = torch.cat([values_of(t) for t in shards.values()])
    scale = torch.cat([t["weight_scale"] for t in shards.values()]).float()
    assert isinstance(layer.quant_method.scheme, layouts.CTW4A8Dynamic)
    assert {n for n, _ in layer.named_parameters()} == {"weight", "weight_scale", "scale_bias"} | (
        {"bias"} if bias else set())
    assert torch.equal(layer.weight, kernel_int4(values.t().to(torch.int8)))
    assert torch.equal(layer.weight_scale, scale.t().contiguous())

    x = torch.randn(m, K, generator=gen)
    ref, tol = oracle("W4A8_DYNAMIC", x, torch.cat([dequantized(t) for t in shards.values()]),
                      b)
    for y in fast_and_exact(layer, x):
        assert y.dtype == torch.float32 and y.shape == (m, sum(widths))
        assert bool(((y.double() - ref).abs() <= tol).all()), float(((y.double() - ref).abs()
                                                                     - tol).max())


@pytest.mark.usefixtures("vllm_ctx")
def test_library_dequantization_agrees_with_the_oracle_weight():
    """The library's own decompress gives the weight the oracle uses (fp32 of it)."""
    w = torch.randn(16, K, generator=torch.Generator().manual_seed(3))
    for group in (0, 32):
        tensors = library_tensors(w, group)
        back = PackedQuantizationCompressor.decompress(tensors, w4a8_scheme(group))["weight"]
        torch.testing.assert_close(back.double(), dequantized(tensors), rtol=1e-6, atol=0)


@pytest.mark.usefixtures("vllm_ctx")
def test_bf16_model_keeps_the_checkpoint_scale_exactly():
    gen = torch.Generator().manual_seed(5)
    layer = w4a8_layer(32, "down", (16,), dtype=torch.bfloat16)
    tensors = library_tensors(torch.randn(16, K, generator=gen) / 8, 32)
    tensors["weight_scale"] = tensors["weight_scale"].to(torch.bfloat16)  # as saved for bf16
    load(layer, {DOWN: tensors})
    assert layer.weight_scale.dtype == torch.float32  # the A8W4 scale operand; bf16 -> fp32 exact
    assert torch.equal(layer.weight_scale, tensors["weight_scale"].t().float())
    x = torch.randn(2, 3, K, generator=gen).to(torch.bfloat16)
    y = layer(x)
    assert y.shape == (2, 3, 16) and y.dtype == torch.bfloat16
    ref, _ = oracle("W4A8_DYNAMIC", x.reshape(6, K).float(), dequantized(tensors))
    mag = x.reshape(6, K).double().abs() @ dequantized(tensors).abs().t()
    assert bool(((y.reshape(6, 16).double() - ref).abs() <= 2e-2 * mag + 1e-6).all())


# ------------------------------------------------------------------------------- bad input

def _shards(group=32, **bad):
    """gate/up tensors from the writer; ``bad = {"<shard>__<name>": tensor or None}``."""
    gen = torch.Generator().manual_seed(9)
    shards = {GATE: writer_tensors(torch.randn(16, K, generator=gen), group),
              UP: writer_tensors(torch.randn(8, K, generator=gen), group)}
    for key, t in bad.items():
        shard, name = key.split("__")
        prefix = GATE if shard == "gate" else UP
        if t is None:
            shards[prefix].pop(name)
        else:
            shards[prefix][name] = t
    return shards


@pytest.mark.usefixtures("vllm_ctx")
@pytest.mark.parametrize("bad, match", [
    ({"up__weight_scale": None},
     rf"'{UP}\.weight_scale' is missing from the checkpoint"),
    ({"gate__weight_scale": torch.ones(16, 3)},
     rf"'{GATE}\.weight_scale' has shape \(16, 3\), which does not fit"),
    ({"up__weight_scale": torch.ones(8, 1)},  # a channel scale where the config says group
     rf"'{UP}\.weight_scale' has shape \(8, 1\), which does not fit"),
    ({"up__weight_scale": torch.ones(8, 2).index_fill_(0, torch.tensor([3]), 0.0)},
     rf"'{UP}\.weight_scale' holds a zero"),
    ({"gate__weight_scale": torch.full((16, 2), float("nan"))},
     rf"'{GATE}\.weight_scale' holds a non-finite value"),
    ({"gate__weight_scale": torch.ones(16, 2, dtype=torch.int32)},
     rf"'{GATE}\.weight_scale' has dtype torch\.int32"),
    ({"up__weight_packed": None}, rf"'{UP}\.weight_packed' is missing"),
    ({"gate__weight_packed": torch.zeros(16, 8, dtype=torch.int8)},
     rf"'{GATE}\.weight_packed' has dtype torch\.int8; accepted: torch\.int32"),
    ({"gate__weight_packed": torch.zeros(16, 4, dtype=torch.int32)},
     rf"'{GATE}\.weight_packed' has shape \(16, 4\), which does not fit"),
])
def test_bad_tensors_raise_naming_the_tensor(bad, match):
    layer = w4a8_layer(32)
    with pytest.raises(QuantTensorError, match=match) as err:
        load(layer, _shards(**bad))
    assert f"layer '{MLP}.gate_up_proj' (W4A8_DYNAMIC)" in str(err.value)


@pytest.mark.usefixtures("vllm_ctx")
def test_layer_geometry_errors():
    with pytest.raises(QuantTensorError, match=r"weight_packed' has 12 outputs.*multiple of 8"):
        w4a8_layer(32, "down", (12,))
    with pytest.raises(DescriptionError, match=r"group_size 32 does not divide .* 48"):
        w4a8_layer(32, "down", (16,), k=48)
    with pytest.raises(QuantTensorError, match=r"weight_packed' cannot hold 12 inputs"):
        w4a8_layer(0, "down", (16,), k=12)


@pytest.mark.usefixtures("vllm_ctx")
def test_a_mapped_type_without_adapter_is_still_rejected(monkeypatch):
    """The generic guard stays: a mapping whose adapter is absent fails naming the layer."""
    monkeypatch.delitem(layouts.ADAPTERS, "W4A8_DYNAMIC")
    with pytest.raises(UnsupportedSchemeError, match="maps to W4A8_DYNAMIC.*no adapter"):
        w4a8_layer(32)
