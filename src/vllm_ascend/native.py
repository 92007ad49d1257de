"""The compiled parts of the plugin (``csrc/``, built by ``setup.py``), loaded in one place:

- ``vllm_ascend._C``: the reference backend's CPU kernels as torch ops
  (``torch.ops.vllm_ascend.*``; x86, built against torch);
- ``vllm_ascend._eplb``: the EPLB ``incremental`` policy, a plain C function loaded with
  ctypes (no torch: the planner process imports numpy only; every architecture).

Both are optional: without them (not built, ``VLLM_ASCEND_SKIP_CSRC=1``) each caller runs
its Python reference and says so (the reference backend through
``device.reference.cpu_kernels``, the policy in its log line).
"""

from __future__ import annotations

import ctypes
import importlib.util

_loaded: bool | None = None
_eplb = None
_eplb_probed = False


def load_extension() -> bool:
    """Load ``vllm_ascend._C`` into ``torch.ops.vllm_ascend`` once; False if not built."""
    global _loaded
    if _loaded is None:
        _loaded = False
        try:
            spec = importlib.util.find_spec("vllm_ascend._C")
            if spec is not None and spec.origin:
                import torch

                torch.ops.load_library(spec.origin)
                _loaded = True
        except (OSError, RuntimeError, ImportError):
            pass
    return _loaded


def eplb_incremental():
    """The C function ``eplb_incremental`` of ``vllm_ascend._eplb`` (signature in
    ``csrc/eplb_incremental.cpp``), or None when the library is not built."""
    global _eplb, _eplb_probed
    if not _eplb_probed:
        _eplb_probed = True
        spec = importlib.util.find_spec("vllm_ascend._eplb")
        if spec is not None and spec.origin:
            try:
                fn = ctypes.CDLL(spec.origin).eplb_incremental
            except (OSError, AttributeError):
                return None
            i64, f64, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
            fn.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, f64, i64, f64, i64, ptr]
            fn.restype = ctypes.c_int
            _eplb = fn
    return _eplb
