"""The compiled C++ extension ``vllm_ascend._C`` (``csrc/``, built by ``setup.py``): the one
place that loads it into ``torch.ops.vllm_ascend``.

It is optional: without it (not built, not x86, ``VLLM_ASCEND_SKIP_CSRC=1``) every caller
runs its plain Python / PyTorch reference and says so (the reference backend through
``device.reference.cpu_kernels``, the ``incremental`` EPLB policy in its log line).
"""

from __future__ import annotations

import importlib.util

_loaded: bool | None = None


def load_extension() -> bool:
    """Load ``vllm_ascend._C`` once; False if it is not built or cannot load."""
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
