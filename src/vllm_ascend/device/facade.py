"""The device facade: the one module that imports ``torch_npu``.

Everything in the plugin calls Ascend operators as ``ops.npu_xxx(...)`` and
device/stream functions through :data:`device`. On an Ascend machine these
resolve to ``torch_npu``; everywhere else to the pure-PyTorch reference
backend in :mod:`vllm_ascend.device.reference`, which has the same signatures
and numerics (see ``shared/reference/torch_npu_ops.md``).

``torch_npu`` is imported lazily, on first use, and an ImportError (or any
load error: a missing CANN library raises OSError) means "no NPU".
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

#: Force the backend: "torch_npu" or "reference". Unset means auto-detect.
BACKEND_ENV = "VLLM_ASCEND_DEVICE_BACKEND"
BACKENDS = ("torch_npu", "reference")


@functools.cache
def _torch_npu() -> ModuleType | None:
    """Import torch_npu once; None when it cannot be loaded on this machine."""
    try:
        import torch_npu  # the plugin's only import of torch_npu

        return torch_npu
    except (ImportError, OSError, RuntimeError):
        return None


def npu_available() -> bool:
    """True when torch_npu loads and at least one NPU device is present."""
    mod = _torch_npu()
    if mod is None:
        return False
    import torch

    npu = getattr(torch, "npu", None)
    try:
        return bool(npu is not None and npu.is_available() and npu.device_count() > 0)
    except RuntimeError:
        return False


def backend_name() -> str:
    """The backend in force: "torch_npu" or "reference"."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(
                f"environment variable {BACKEND_ENV}={forced!r} is not a backend; "
                f"accepted values: {', '.join(BACKENDS)} (or unset for auto)"
            )
        if forced == "torch_npu" and _torch_npu() is None:
            raise RuntimeError(
                f"{BACKEND_ENV}=torch_npu but torch_npu cannot be imported here"
            )
        return forced
    return "torch_npu" if npu_available() else "reference"


class _Ops:
    """Attribute access resolves an operator name on the active backend.

    The first access of a name resolves it and stores the function on the instance,
    so later accesses are plain attribute lookups (cheap on hot paths, and
    transparent to torch.compile). :meth:`_reset` forgets them (tests).
    """

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("npu_"):
            raise AttributeError(name)
        if backend_name() == "torch_npu":
            fn = getattr(_torch_npu(), name)
        else:
            from vllm_ascend.device import reference

            try:
                fn = reference.OPS[name]
            except KeyError:
                raise AttributeError(
                    f"operator {name!r} has no reference implementation; "
                    f"available: {', '.join(sorted(reference.OPS))}"
                ) from None
        setattr(self, name, fn)
        return fn

    def bind(self) -> None:
        """Resolve every operator now, outside any torch.compile trace.

        The plugin calls this at registration; compiled model code then only does
        attribute lookups (dynamo cannot trace the import of torch_npu).
        """
        from vllm_ascend.device import reference

        for name in reference.OPS:
            try:
                getattr(self, name)
            except AttributeError:  # torch_npu build without this operator
                pass
        for name in reference.FUSIONS:
            fusion(name)
        if backend_name() == "reference":
            reference.prepare()  # the CPU fast-path probes, also outside any trace

    def _reset(self) -> None:
        self.__dict__.clear()
        _fusions.clear()

    def __dir__(self) -> list[str]:
        from vllm_ascend.device import reference

        return sorted(reference.OPS)


class _Device:
    """``torch.npu`` on Ascend, the CPU stand-in (Stream, Event, ...) elsewhere."""

    def __getattr__(self, name: str) -> Any:
        if backend_name() == "torch_npu":
            import torch

            return getattr(torch.npu, name)  # type: ignore[attr-defined]
        from vllm_ascend.device.reference import stream

        return getattr(stream, name)


def mark_volatile_weights(*tensors: Any) -> None:
    """Declare weight tensors whose contents are rewritten between uses (the shared-weight
    ring buffers): the backend must not keep data derived from them. torch_npu computes on
    a weight as stored (nothing to do); the reference backend's CPU fast paths would
    otherwise rebuild a prepacked copy at every use (``reference.cpu_kernels.mark_volatile``).
    """
    if backend_name() == "reference":
        from vllm_ascend.device.reference import cpu_kernels

        cpu_kernels.mark_volatile(*tensors)


#: Resolved fusions (name -> function or None); filled by fusion() and Ops.bind().
_fusions: dict[str, Any] = {}


def fusion(name: str) -> Any:
    """A fusion the backend offers for a sequence of facade ops, or None (call the ops).

    torch_npu offers none: its per-op kernels are what an NPU runs. The reference backend
    offers CPU kernels (``reference.FUSIONS``), each returning None for arguments it does
    not cover. An unknown name is a KeyError listing the known ones. Resolved once per name
    (``ops.bind()`` resolves them all, outside any torch.compile trace).
    """
    try:
        return _fusions[name]
    except KeyError:
        pass
    from vllm_ascend.device import reference

    if name not in reference.FUSIONS:
        raise KeyError(f"unknown fusion {name!r}; known: {', '.join(sorted(reference.FUSIONS))}")
    fn = None if backend_name() == "torch_npu" else reference.FUSIONS[name]
    _fusions[name] = fn
    return fn


#: ``ops.npu_rms_norm(x, gamma, 1e-6)`` etc.
ops = _Ops()
#: ``device.Stream()``, ``device.current_stream()``, ``device.synchronize()`` etc.
device = _Device()
