"""Eager-mode add + RMSNorm + per-token int8 quantisation in one op, where the model allows.

In a Llama-style decoder layer the output of ``input_layernorm`` goes only to
``self_attn.qkv_proj`` and that of ``post_attention_layernorm`` only to ``mlp.gate_up_proj``.
When such a linear is W8A8_DYNAMIC / W4A8_DYNAMIC (it quantises its input per token first),
:func:`enable` marks the norm; the marked norm (``ops/layernorm.py``) then returns the int8
rows of ``ops.npu_add_rms_norm_dynamic_quant`` instead of float rows, with their per-token
scale attached (:func:`attach`), and the linear takes them as they are (:func:`token_scale`)
instead of calling ``npu_dynamic_quant``. Compiled models get the same fusion from the graph
pass (``vllm_ascend/compilation/fusion.py``); the marked norms check that they are not being
traced. Only the layer classes in :data:`LAYERS` are touched (their forward is known to pass
the norm output to that one linear), and only norms with a residual (the first layer's
``input_layernorm`` has none and stays float).
"""

from __future__ import annotations

import torch

from vllm_ascend.logger import logger

#: Decoder layer class name -> ((norm attribute, linear path), ...) whose norm output feeds
#: only that linear (read in vLLM's model code: llama.py, qwen2.py, qwen3.py).
_PAIRS = (("input_layernorm", "self_attn.qkv_proj"), ("post_attention_layernorm",
                                                     "mlp.gate_up_proj"))
LAYERS = {"LlamaDecoderLayer": _PAIRS, "Qwen2DecoderLayer": _PAIRS, "Qwen3DecoderLayer": _PAIRS}
#: Linear schemes that quantise their whole input per token with one scale (TP size 1).
SCHEMES = ("W8A8_DYNAMIC", "W4A8_DYNAMIC")
_SCALE = "_ascend_token_scale"


def attach(xq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 rows ``(..., H)`` carrying their fp32 per-token scale ``(...)``."""
    setattr(xq, _SCALE, scale)
    return xq


def token_scale(x: torch.Tensor) -> torch.Tensor | None:
    """The per-token scale ``(M,)`` of rows from :func:`attach`, else None."""
    if x.dtype != torch.int8:
        return None
    scale = getattr(x, _SCALE, None)
    return None if scale is None else scale.reshape(-1)


def _get(module: torch.nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _takes_int8(linear) -> bool:
    scheme = getattr(getattr(linear, "quant_method", None), "scheme", None)
    if getattr(scheme, "quant_type", None) not in SCHEMES:
        return False
    row_tp = getattr(scheme, "row_tp", 1)
    return (row_tp if isinstance(row_tp, int) else row_tp[1]) == 1


def enable(model: torch.nn.Module) -> int:
    """Mark every fusable norm of ``model`` (see the module docstring); returns the count."""
    from vllm_ascend.ops.layernorm import AscendRMSNorm

    count = 0
    for module in model.modules():
        for norm_name, linear_path in LAYERS.get(type(module).__name__, ()):
            norm, linear = getattr(module, norm_name, None), _get(module, linear_path)
            if isinstance(norm, AscendRMSNorm) and linear is not None and _takes_int8(linear) \
                    and norm.has_weight and norm.variance_size_override is None:
                norm.fuse_dynamic_quant = True
                count += 1
    if count:
        logger.info("vllm-ascend: %d RMSNorms fused with their linear's per-token int8 "
                    "quantisation (eager)", count)
    return count
