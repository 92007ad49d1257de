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
from vllm_ascend.registry import Registry

LAYER_TYPES = ("linear", "moe", "attention")

T = TypeVar("T", bound=type)


def _discover() -> None:
    """Import every scheme module in this package: their decorators fill the registry."""
    import vllm_ascend.quantization.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "base") and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def _tag(key: tuple[str, str], cls: type) -> None:
    cls.quant_type, cls.layer_type = key


SCHEMES: Registry[type] = Registry(
    "scheme", error=UnsupportedSchemeError, on_register=_tag, discover=_discover,
    format_key=lambda key: "/".join(key),
)


def register_scheme(quant_type: str, layer_type: str) -> Callable[[T], T]:
    """Class decorator registering a scheme; a duplicate key raises ValueError."""
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"layer_type {layer_type!r} is not one of {', '.join(LAYER_TYPES)}")
    return SCHEMES.register((quant_type, layer_type))


def registered_schemes() -> list[tuple[str, str]]:
    """All (quant_type, layer_type) keys, sorted: the listing error messages use."""
    return SCHEMES.keys()


def get_scheme_class(quant_type: str, layer_type: str) -> type:
    """The scheme class; an unknown key raises UnsupportedSchemeError listing the registered."""
    if (quant_type, layer_type) not in SCHEMES:
        raise UnsupportedSchemeError(
            f"no {layer_type} scheme registered for quantization type {quant_type!r}; "
            f"registered: {SCHEMES.listing()}"
        )
    return SCHEMES.get((quant_type, layer_type))
