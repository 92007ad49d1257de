"""Build one vLLM linear layer quantized through AscendQuantConfig, load ModelSlim tensors
into it with vLLM's own weight loaders, and compute float64 oracles."""

from __future__ import annotations

import torch

from tests.ut.quantization.synth import quantize
from vllm_ascend.quantization.description import parse_description
from vllm_ascend.quantization.modelslim_config import AscendQuantConfig

ROW = "model.layers.0.self_attn.o_proj"
MERGED = "model.layers.0.mlp.gate_up_proj"
SHARDS = {ROW: (ROW,), MERGED: ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")}
PACKED = {"gate_up_proj": ["gate_proj", "up_proj"]}


def config_for(types: dict[str, str], **globals_) -> AscendQuantConfig:
    """An AscendQuantConfig over a description giving ``{shard prefix: type}``."""
    data = {f"{p}.weight": t for p, t in types.items()}
    data.update(globals_)
    config = AscendQuantConfig(parse_description(data, "test_description.json"))
    config.packed_modules_mapping = dict(PACKED)
    return config


def build(prefix: str, quant_type: str, k: int, widths: list[int], *,
          dtype: torch.dtype = torch.float32, bias: bool = False, group: int = 0,
          config: AscendQuantConfig | None = None):
    """A RowParallelLinear (ROW, one width) or MergedColumnParallelLinear (MERGED)."""
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    shards = SHARDS[prefix]
    config = config or config_for({s: quant_type for s in shards}, group_size=group)
    if prefix == ROW:
        return RowParallelLinear(k, widths[0], bias=bias, quant_config=config, prefix=prefix,
                                 params_dtype=dtype, return_bias=False)
    return MergedColumnParallelLinear(k, widths, bias=bias, quant_config=config, prefix=prefix,
                                      params_dtype=dtype, return_bias=False)


def load(layer, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Feed checkpoint tensors ``{<shard prefix>.<param>: t}`` through the layer's loaders."""
    params = dict(layer.named_parameters())
    shards = SHARDS[prefix]
    for full, tensor in tensors.items():
        shard_prefix, _, name = full.rpartition(".")
        param = params[name]
        if len(shards) == 1:
            param.weight_loader(param, tensor)
        else:
            param.weight_loader(param, tensor, shards.index(shard_prefix))


def make_tensors(prefix: str, quant_type: str, k: int, widths: list[int], gen: torch.Generator,
                 *, group: int = 0, calib: tuple[float, float] = (0.02, 3.0),
                 bias: torch.Tensor | None = None):
    """Checkpoint tensors for every shard + the float64 dequantized weight (N, K)."""
    tensors, deqs, start = {}, [], 0
    for shard, width in zip(SHARDS[prefix], widths):
        w = torch.randn(width, k, generator=gen) / k ** 0.5
        shard_bias = None if bias is None else bias[start:start + width]
        start += width
        new, deq = quantize(shard, w, quant_type, {shard: calib}, group=group, bias=shard_bias)
        tensors.update(new)
        deqs.append(deq)
    return tensors, torch.cat(deqs)


def oracle(quant_type: str, x: torch.Tensor, w_deq: torch.Tensor,
           bias: torch.Tensor | None = None, calib: tuple[float, float] = (0.02, 3.0),
           deq: torch.Tensor | None = None):
    """(float64 y, per-element tolerance) for ``x (M, K)``: the scheme's math in float64 on
    the dequantized weight. Activations are quantised as the device does (the division in
    fp32, then round half to even), so the integer activations match exactly; the tolerance
    covers fp32 rounding of the result (|x| |W| eps-scaled) and W8A8's ``round(b / d)``
    (``deq``: the exact W8A8 deq_scale when known, else estimated from the weight)."""
    xf = x.float()
    x64 = xf.double()
    if quant_type in ("W8A8_DYNAMIC", "W4A8_DYNAMIC"):  # int8 per-token activations
        s = xf.abs().amax(dim=1) / 127
        s = torch.where(s > 0, s, torch.ones_like(s))
        x64 = torch.round(xf / s[:, None]).clamp(-127, 127).double() * s.double()[:, None]
    elif quant_type == "W8A8":
        s_x, o_x = calib
        xq = torch.round(xf / torch.tensor(s_x, dtype=torch.float32) + o_x).clamp(-128, 127)
        x64 = (xq.double() - o_x) * torch.tensor(s_x, dtype=torch.float32).double()
    y = x64 @ w_deq.t()
    tol = 1e-5 * (x64.abs() @ w_deq.abs().t()) + 1e-7
    if bias is not None:
        y = y + bias.double()
        tol = tol + 1e-6 * bias.double().abs()
    if quant_type == "W8A8":  # |round(b / d) d - b| <= d / 2, d = s_x s_w (~ s_x max|W| / 127)
        d = calib[0] * w_deq.abs().amax(dim=1) / 127 if deq is None else deq.double()
        tol = tol + 0.5 * d[None, :] * (1 + 1e-3)
    return y, tol
