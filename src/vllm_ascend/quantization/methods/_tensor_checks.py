"""Load-time checks and parameter surgery shared by the int4/int8 schemes in this package.

Checks take the scheme (``owner``) and raise ``owner.tensor_error(name, problem, shard)``
(:class:`~vllm_ascend.quantization.methods.base.CheckpointBinding`): a
:class:`~vllm_ascend.quantization.errors.QuantTensorError` naming the layer prefix, the
checkpoint tensor and, when known, its file. An owner may define
``shard_of_index(name, index) -> int | None`` to name the fused shard (q/k/v, gate/up)
that holds a bad element.
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_ascend.quantization.errors import QuantTensorError


def fail(owner: Any, name: str, problem: str, index: tuple[int, ...] | None = None
         ) -> QuantTensorError:
    """The error for tensor ``name`` of ``owner``'s layer (element ``index`` if given)."""
    shard_of = getattr(owner, "shard_of_index", None)
    shard = shard_of(name, index) if (shard_of is not None and index is not None) else None
    return owner.tensor_error(name, problem, shard)


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def loaded(layer: torch.nn.Module, name: str, shape: tuple[int, ...], owner: Any,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """``layer.<name>`` after loading, checked to have ``shape`` (and ``dtype`` if given)."""
    t = getattr(layer, name, None)
    if t is None:
        raise fail(owner, name, "is missing: the layer has no such tensor after loading")
    if tuple(t.shape) != tuple(shape):
        raise fail(owner, name, f"has shape {tuple(t.shape)}; expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise fail(owner, name, f"has dtype {t.dtype}; expected {dtype}")
    return t.data


def unloaded(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NaN-filled storage for a float checkpoint tensor: one the checkpoint never provides
    (e.g. a ``group_size`` that does not match the file) then fails :func:`finite`."""
    return torch.full(shape, float("nan"), dtype=dtype)


def finite(t: torch.Tensor, name: str, owner: Any) -> torch.Tensor:
    bad = ~torch.isfinite(t.float())
    if bool(bad.any()):
        idx = _first(bad)
        hint = " (NaN everywhere: the tensor was never loaded from the checkpoint)" \
            if bool(bad.all()) and bool(torch.isnan(t.float()).all()) else ""
        raise fail(owner, name, f"holds a non-finite value ({t[idx].item()}) at index {idx}"
                   + hint, idx)
    return t


def finite_nonzero(t: torch.Tensor, name: str, owner: Any) -> torch.Tensor:
    """Scales must be finite and non-zero (a zero scale erases its channel or group)."""
    finite(t, name, owner)
    zero = t == 0
    if bool(zero.any()):
        idx = _first(zero)
        raise fail(owner, name, f"holds a zero at index {idx}; scales must be finite and "
                                "non-zero", idx)
    return t


def all_zero(t: torch.Tensor, name: str, owner: Any) -> None:
    """Offsets of symmetric quantisation: anything non-zero would be silently ignored."""
    nz = t != 0
    if bool(nz.any()):
        idx = _first(nz)
        raise fail(owner, name, f"holds a non-zero offset ({t[idx].item()}) at index {idx}; "
                                "only symmetric quantisation (offsets all 0) is supported", idx)


def int_range(t: torch.Tensor, lo: int, hi: int, name: str, owner: Any) -> torch.Tensor:
    """Integer values stored in a wider dtype (int4 in int8) must fit ``[lo, hi]``."""
    out = (t < lo) | (t > hi)
    if bool(out.any()):
        idx = _first(out)
        raise fail(owner, name, f"holds {int(t[idx])} at index {idx}, outside [{lo}, {hi}] "
                                "(int4 values)", idx)
    return t


def replace_param(layer: torch.nn.Module, name: str, data: torch.Tensor) -> None:
    """Swap ``layer.<name>`` for a plain frozen Parameter holding ``data`` (the processed form;
    its shape or dtype may differ from the checkpoint tensor it replaces)."""
    if hasattr(layer, name):
        delattr(layer, name)
    layer.register_parameter(name, torch.nn.Parameter(data, requires_grad=False))


def drop_params(layer: torch.nn.Module, *names: str) -> None:
    """Free checkpoint tensors that the processed form no longer needs."""
    for name in names:
        if hasattr(layer, name):
            delattr(layer, name)
