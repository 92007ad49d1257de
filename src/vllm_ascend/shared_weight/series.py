"""Find the series a ``layer_sharding`` config names in a model, and check they are uniform.

A series is every vLLM ``LinearBase`` module whose qualified name ends in ``.<suffix>``, in
model order (``model.layers.0.self_attn.o_proj``, ``model.layers.1...``). Its layers must be
interchangeable: same class, same parameters (names, shapes, dtypes) and the same quant
scheme, so one ring of buffers fits all of them and one processed quant method computes
any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_ascend.shared_weight.config import SECTION, LayerShardingConfigError

#: A parameter that stays resident on every rank (N values; the layer's forward reads it).
RESIDENT = ("bias",)


@dataclass
class Series:
    """One series: ``names[i]`` / ``modules[i]`` is layer ``i``."""

    suffix: str
    names: list[str]
    modules: list[torch.nn.Module]

    def __len__(self) -> int:
        return len(self.modules)


def _linear_base():
    from vllm.model_executor.layers.linear import LinearBase

    return LinearBase


def linear_suffixes(model: torch.nn.Module) -> list[str]:
    """The last name component of every linear layer of ``model``, sorted."""
    base = _linear_base()
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, base)})


def scheme_of(module: torch.nn.Module) -> str:
    """The module's quant scheme: its quant method's class (and the Ascend scheme inside)."""
    method = getattr(module, "quant_method", None)
    name = type(method).__qualname__
    inner = getattr(method, "scheme", None)
    return f"{name}({type(inner).__qualname__})" if inner is not None else name


def signature(module: torch.nn.Module) -> tuple:
    """What must agree between the layers of a series (before weight processing)."""
    params = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters(
        recurse=False))
    return (type(module).__qualname__, scheme_of(module), params)


def find_series(model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[Series]:
    """One :class:`Series` per suffix, validated (see the module docstring)."""
    base = _linear_base()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, base)]
    out, claimed = [], {}
    for suffix in suffixes:
        found = [(n, m) for n, m in linears if n == suffix or n.endswith("." + suffix)]
        if not found:
            raise LayerShardingConfigError(
                f"{SECTION}['layers']: {suffix!r} names no linear layer of this model; its "
                f"linear layer suffixes: {', '.join(linear_suffixes(model))}")
        for n, _ in found:
            if n in claimed:
                raise LayerShardingConfigError(
                    f"{SECTION}['layers']: {n} is in two series, {claimed[n]!r} and {suffix!r}")
            claimed[n] = suffix
        first_name, first = found[0]
        want = signature(first)
        for n, m in found[1:]:
            got = signature(m)
            if got != want:
                what = ("class" if got[0] != want[0] else
                        "quant scheme" if got[1] != want[1] else "parameters (shape / dtype)")
                raise LayerShardingConfigError(
                    f"{SECTION}['layers']: series {suffix!r} is not uniform: {n} differs from "
                    f"{first_name} in its {what}: {_describe(got, what)} vs "
                    f"{_describe(want, what)}")
        if getattr(first, "skip_bias_add", False) and getattr(first, "bias", None) is not None:
            raise LayerShardingConfigError(
                f"{SECTION}['layers']: series {suffix!r} returns its bias to the caller "
                "(skip_bias_add); such layers cannot be sharded")
        out.append(Series(suffix, [n for n, _ in found], [m for _, m in found]))
    return out


def _describe(sig: tuple, what: str) -> str:
    if what == "class":
        return sig[0]
    if what == "quant scheme":
        return sig[1]
    return ", ".join(f"{n} {list(s)} {d.replace('torch.', '')}" for n, s, d in sig[2])
