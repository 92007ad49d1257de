"""A tiny synthetic ModelSlim checkpoint (LlamaForCausalLM) with known dequantized weights.

``build_checkpoint(dir, types)`` writes ``config.json``, ``model.safetensors`` and
``quant_model_description.json`` and returns the float64 weights each quantized tensor
dequantizes to, so tests can compare the plugin's layers with plain float64 math.

Quantizers (ModelSlim conventions, see docs/quantization.md):

- ``W8A8_DYNAMIC``: symmetric per-channel int8, ``weight_scale`` (N, 1), zero ``weight_offset``;
- ``W8A16``: asymmetric per-channel int8, ``W = (w - weight_offset) * weight_scale``;
- ``W8A8``: symmetric per-channel int8 weights, calibrated ``input_scale`` / ``input_offset``
  shared by the shards of one input, ``deq_scale = input_scale * weight_scale`` (fp32) and
  ``quant_bias = round(b / deq_scale) - input_offset * sum_k w`` (int32);
- ``FLOAT``: the float weight itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB, LAYERS = 64, 128, 2, 1, 128, 2
HEAD_DIM = HIDDEN // HEADS
PROJ_OUT = {
    "self_attn.q_proj": HEADS * HEAD_DIM, "self_attn.k_proj": KV_HEADS * HEAD_DIM,
    "self_attn.v_proj": KV_HEADS * HEAD_DIM, "self_attn.o_proj": HIDDEN,
    "mlp.gate_proj": INTER, "mlp.up_proj": INTER, "mlp.down_proj": HIDDEN,
}
PROJ_IN = {name: (INTER if name == "mlp.down_proj" else
                  HEADS * HEAD_DIM if name == "self_attn.o_proj" else HIDDEN)
           for name in PROJ_OUT}
#: Activation calibration per input: the shards of one fused layer share it.
INPUT_GROUP = {"self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
               "self_attn.o_proj": "o", "mlp.gate_proj": "gate_up", "mlp.up_proj": "gate_up",
               "mlp.down_proj": "down"}

#: Layer 0 and layer 1 mix every scheme with FLOAT layers, fused shards agreeing.
DEFAULT_TYPES = {
    "model.layers.0.self_attn.qkv": "W8A8_DYNAMIC", "model.layers.0.self_attn.o_proj": "W8A8",
    "model.layers.0.mlp.gate_up": "W8A16", "model.layers.0.mlp.down_proj": "FLOAT",
    "model.layers.1.self_attn.qkv": "W8A8", "model.layers.1.self_attn.o_proj": "W8A16",
    "model.layers.1.mlp.gate_up": "FLOAT", "model.layers.1.mlp.down_proj": "W8A8_DYNAMIC",
}
_FUSED = {"self_attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj")}


def unfused_types(types: dict[str, str]) -> dict[str, str]:
    """``{...qkv: T}`` -> ``{...q_proj: T, ...k_proj: T, ...v_proj: T}``."""
    out = {}
    for key, quant_type in types.items():
        layer, _, rest = key.partition(".self_attn.") if ".self_attn." in key \
            else key.partition(".mlp.")
        group = ("self_attn." if ".self_attn." in key else "mlp.") + rest
        for proj in _FUSED.get(group, (group,)):
            out[f"{layer}.{proj}"] = quant_type
    return out


def quantize(name: str, w: torch.Tensor, quant_type: str,
             calib: dict[str, tuple[float, float]] | None = None, *, group: int = 0,
             bias: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One linear's checkpoint tensors and the float64 (N, K) weight they dequantize to.

    ``group`` > 0: per-group scales/offsets (N, K/group) for W8A16 / W4A16. ``bias`` (N,)
    is folded into W8A8's quant_bias (other types leave biases to the caller)."""
    w = w.double()
    n, k = w.shape
    if quant_type == "FLOAT":
        return {f"{name}.weight": w.float()}, w.float().double()
    if quant_type in ("W8A16", "W4A16"):
        lo_q, hi_q = (-128, 127) if quant_type == "W8A16" else (-8, 7)
        g = group or k
        wg = w.reshape(n, k // g, g)
        lo, hi = wg.min(dim=2).values, wg.max(dim=2).values
        scale = ((hi - lo) / (hi_q - lo_q)).clamp_min(1e-6).float()
        offset = torch.round(lo_q - lo / scale.double()).clamp(lo_q, hi_q)
        q = torch.round(wg / scale.double()[..., None] + offset[..., None]).clamp(lo_q, hi_q)
        deq = ((q - offset[..., None]) * scale.double()[..., None]).reshape(n, k)
        return {f"{name}.weight": q.reshape(n, k).to(torch.int8),
                f"{name}.weight_scale": scale, f"{name}.weight_offset": offset.float()}, deq
    scale = (w.abs().max(dim=1).values / 127).clamp_min(1e-6).float()
    q = torch.round(w / scale.double()[:, None]).clamp(-127, 127)
    deq = q * scale.double()[:, None]
    tensors = {f"{name}.weight": q.to(torch.int8), f"{name}.weight_scale": scale[:, None],
               f"{name}.weight_offset": torch.zeros(n, 1)}
    if quant_type == "W8A8":
        s_x, o_x = calib[name]
        deq_scale = (torch.tensor(s_x, dtype=torch.float32) * scale).float()
        folded = torch.zeros(n, dtype=torch.float64) if bias is None \
            else torch.round(bias.double() / deq_scale.double())
        quant_bias = (folded - o_x * q.sum(dim=1)).to(torch.int32)
        tensors.update({f"{name}.input_scale": torch.tensor([s_x], dtype=torch.float32),
                        f"{name}.input_offset": torch.tensor([o_x], dtype=torch.float32),
                        f"{name}.deq_scale": deq_scale, f"{name}.quant_bias": quant_bias})
    return tensors, deq


def build_checkpoint(path: Path, types: dict[str, str] | None = None, *, seed: int = 0,
                     quantization_config: dict | None = None, description: bool = True
                     ) -> dict[str, torch.Tensor]:
    """Write the checkpoint; returns ``{unfused linear prefix: float64 dequantized (N, K)}``
    plus ``"calib:<prefix>"`` -> ``tensor([s_x, o_x])`` for W8A8 layers."""
    types = unfused_types(types or DEFAULT_TYPES)
    gen = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=gen) * 0.5,
        "model.norm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=gen),
        "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=gen) * 0.2,
    }
    desc = {"model_quant_type": "W8A8_DYNAMIC", "version": "1.0.0", "group_size": 0,
            "model.embed_tokens.weight": "FLOAT", "model.norm.weight": "FLOAT",
            "lm_head.weight": "FLOAT"}
    dequant: dict[str, torch.Tensor] = {}
    for layer in range(LAYERS):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            key = f"model.layers.{layer}.{norm}.weight"
            tensors[key] = 1 + 0.1 * torch.randn(HIDDEN, generator=gen)
            desc[key] = "FLOAT"
        calib = {}
        for proj, group in INPUT_GROUP.items():
            s_x = 0.01 + 0.02 * float(torch.rand(1, generator=gen)) if group != "qkv" else 0.02
            calib.setdefault(group, (s_x, float(torch.randint(-4, 5, (1,), generator=gen))))
        for proj in PROJ_OUT:
            name = f"model.layers.{layer}.{proj}"
            w = torch.randn(PROJ_OUT[proj], PROJ_IN[proj], generator=gen) / PROJ_IN[proj] ** 0.5
            quant_type = types.get(name, "FLOAT")
            layer_calib = {name: calib[INPUT_GROUP[proj]]}
            new, deq = quantize(name, w, quant_type, layer_calib)
            tensors.update(new)
            desc.update({key: quant_type for key in new})
            dequant[name] = deq
            if quant_type == "W8A8":
                dequant[f"calib:{name}"] = torch.tensor(layer_calib[name], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    if description:
        (path / "quant_model_description.json").write_text(json.dumps(desc, indent=1))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1,
        "eos_token_id": 2, "rope_theta": 10000.0,
    }
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return dequant


def write_float_checkpoint(path: Path, src: Path, dequant: dict[str, torch.Tensor]) -> None:
    """The same model with every linear replaced by its dequantized float weight (no
    description): what vanilla vLLM should compute for weight-only schemes."""
    from safetensors.torch import load_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in load_file(str(src / "model.safetensors")).items()
               if k.rsplit(".", 1)[0] not in dequant}
    for name, w in dequant.items():
        if not name.startswith("calib:"):
            tensors[f"{name}.weight"] = w.float()
    save_file(tensors, str(path / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    (path / "config.json").write_text(json.dumps(config, indent=1))
