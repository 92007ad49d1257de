"""Quantization schemes, one module each; see :mod:`.registry`."""

from vllm_ascend.quantization.methods.registry import (
    LAYER_TYPES,
    get_scheme_class,
    register_scheme,
    registered_schemes,
)

__all__ = ["LAYER_TYPES", "get_scheme_class", "register_scheme", "registered_schemes"]
