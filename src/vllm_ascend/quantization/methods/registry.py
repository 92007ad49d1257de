"""Scheme registry: ``@register_scheme("W8A8_DYNAMIC", "linear")`` on a class is all it takes.

Keys are (quant_type, layer_type) with quant_type as written in
``quant_model_description.json`` and layer_type one of :data:`LAYER_TYPES`.
Every module in this package is imported on first lookup, so adding a scheme means
adding one module with one decorator.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

from vllm_ascend.quantization.errors import UnsupportedSchemeError

LAYER_TYPES = ("linear", "moe", "attention")

T = TypeVar("T", bound=type)

_SCHEMES: dict[tuple[str, str], type] = {}
_discovered = False


def register_scheme(quant_type: str, layer_type: str) -> Callable[[T], T]:
    """Class decorator registering a scheme; a duplicate key raises ValueError."""
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"layer_type {layer_type!r} is not one of {', '.join(LAYER_TYPES)}")

    def decorator(cls: T) -> T:
        key = (quant_type, layer_type)
        if key in _SCHEMES and _SCHEMES[key] is not cls:
            raise ValueError(
                f"scheme {quant_type}/{layer_type} is already registered by "
                f"{_SCHEMES[key].__module__}.{_SCHEMES[key].__qualname__}"
            )
        _SCHEMES[key] = cls
        cls.quant_type = quant_type
        cls.layer_type = layer_type
        return cls

    return decorator


def _discover() -> None:
    """Import every scheme module in this package (idempotent)."""
    global _discovered
    if _discovered:
        return
    import vllm_ascend.quantization.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "base") and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def registered_schemes() -> list[tuple[str, str]]:
    """All (quant_type, layer_type) keys, sorted: the listing error messages use."""
    _discover()
    return sorted(_SCHEMES)


def get_scheme_class(quant_type: str, layer_type: str) -> type:
    _discover()
    try:
        return _SCHEMES[(quant_type, layer_type)]
    except KeyError:
        listing = ", ".join(f"{q}/{l}" for q, l in registered_schemes())
        raise UnsupportedSchemeError(
            f"no {layer_type} scheme registered for quantization type {quant_type!r}; "
            f"registered: {listing}"
        ) from None
