"""``--format compressed-tensors``: an llm-compressor style checkpoint.

``quantization_config`` is built with the ``compressed_tensors`` library's own
``QuantizationConfig`` / ``QuantizationScheme`` / ``QuantizationArgs`` (one config group
targeting ``Linear``, ``ignore`` = lm_head and the decoder layers kept float), and the
tensors are what llm-compressor writes for that config (``N`` outputs, ``K`` inputs):

============  ======================================  =======================================
scheme        format                                  tensors per linear layer
============  ======================================  =======================================
W8A8_DYNAMIC  int-quantized, int8 channel weights,    weight (N, K) int8, weight_scale (N, 1)
              int8 token dynamic activations
W8A8          int-quantized, int8 channel weights,    + input_scale (1,), input_zero_point (1,)
              int8 tensor static activations          int8 (asymmetric activations only)
W8A16         pack-quantized, int8 channel|group      weight_packed (N, K/4) int32,
                                                      weight_scale (N, 1) | (N, K/G),
                                                      weight_shape (2,) int64
W4A16         pack-quantized, int4 group|channel      weight_packed (N, K/8) int32, as above
W4A8_DYNAMIC  pack-quantized, int4 group|channel      as W4A16 (+ int8 token dynamic
              weights, int8 token dynamic acts        activations in the config)
============  ======================================  =======================================

Values and scales use the same symmetric math as the ModelSlim writer
(:mod:`~vllm_ascend.tools.quantize_math`: ``s = max |w| / 127`` or ``/ 7``); packed words hold
``value + 2**(bits-1)`` per field, lowest field first (the library's ``pack_to_int32``).
The plugin loads all five this way (W4A8_DYNAMIC through
``quantization.compressed_tensors_layouts.CTW4A8Dynamic``).
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_ascend.tools import quantize_math as qm

INT_QUANTIZED, PACK_QUANTIZED = "int-quantized", "pack-quantized"


def _args(bits: int, strategy: str, group: int = 0, **kw: Any):
    from compressed_tensors.quantization import QuantizationArgs

    extra = {"group_size": group} if strategy == "group" else {}
    return QuantizationArgs(num_bits=bits, type="int", symmetric=kw.pop("symmetric", True),
                            strategy=strategy, **extra, **kw)


def scheme_args(quant_type: str, group: int, symmetric_act: bool) -> tuple[Any, Any, str]:
    """(weights args, input_activations args or None, format) for ``quant_type``."""
    w_strategy = "group" if group else "channel"
    token_dynamic = _args(8, "token", dynamic=True)
    table = {
        "W8A8_DYNAMIC": (_args(8, "channel"), token_dynamic, INT_QUANTIZED),
        "W8A8": (_args(8, "channel"), _args(8, "tensor", dynamic=False,
                                            symmetric=symmetric_act), INT_QUANTIZED),
        "W8A16": (_args(8, w_strategy, group), None, PACK_QUANTIZED),
        "W4A16": (_args(4, w_strategy, group), None, PACK_QUANTIZED),
        "W4A8_DYNAMIC": (_args(4, w_strategy, group), token_dynamic, PACK_QUANTIZED),
    }
    if quant_type not in table:
        raise ValueError(f"no compressed-tensors mapping for {quant_type!r}")
    return table[quant_type]


def quantization_config(quant_type: str, group: int, symmetric_act: bool,
                        ignore: list[str]) -> dict[str, Any]:
    """config.json's ``quantization_config`` (JSON-ready dict) for the whole model."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    weights, acts, fmt = scheme_args(quant_type, group, symmetric_act)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts,
                                format=fmt)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt,
                                quantization_status="compressed", ignore=list(ignore))
    return config.model_dump(mode="json")


def layer_tensors(w: torch.Tensor, quant_type: str, group: int,
                  calib: tuple[float, float] | None = None,
                  symmetric_act: bool = False) -> dict[str, torch.Tensor]:
    """``{suffix: tensor}`` of one linear layer (see the module docstring); W8A8 writes
    ``input_zero_point`` exactly when the activations are asymmetric."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    if quant_type in ("W8A8_DYNAMIC", "W8A8"):
        q, scale = qm.symmetric(w, qm.INT8_MAX)
        out = {"weight": q, "weight_scale": scale}
        if quant_type == "W8A8":
            if calib is None:
                raise ValueError("W8A8 needs calibrated activation parameters")
            s_x, o_x = calib
            out["input_scale"] = torch.tensor([s_x], dtype=torch.float32)
            if not symmetric_act:
                out["input_zero_point"] = torch.tensor([int(o_x)], dtype=torch.int8)
        return out
    bits = 8 if quant_type == "W8A16" else 4
    q, scale = qm.symmetric(w, qm.INT8_MAX if bits == 8 else qm.INT4_MAX, group)
    return {"weight_packed": pack_to_int32(q, bits, packed_dim=1), "weight_scale": scale,
            "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}


def dequantize(tensors: dict[str, torch.Tensor], quant_type: str) -> torch.Tensor:
    """float64 (N, K) weight the tensors of :func:`layer_tensors` stand for."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    if "weight_packed" in tensors:
        bits = 8 if quant_type == "W8A16" else 4
        shape = torch.Size(tensors["weight_shape"].tolist())
        q = unpack_from_int32(tensors["weight_packed"], bits, shape, packed_dim=1)
    else:
        q = tensors["weight"]
    return qm.dequantize(q, tensors["weight_scale"])
