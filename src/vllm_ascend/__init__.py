"""vllm-ascend: vLLM on Huawei Ascend NPUs, and on CPU through a torch_npu reference backend.

vLLM loads two entry points from this package:

- ``vllm.platform_plugins`` -> :func:`register`: which platform class to use
  (``NPUPlatform``, the CPU-hosted ``AscendCPUPlatform``, or None to stay out);
- ``vllm.general_plugins`` -> :func:`register_general`: runs in every process and
  registers the op replacements and the ``ascend`` quantization config.

Both are called more than once per process and have no side effects beyond
idempotent registration. Importing this package imports neither torch_npu nor vLLM.
"""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> str | None:
    """Platform plugin: the qualified name of the platform class, or None."""
    from vllm_ascend.platform.selection import resolve_platform

    return resolve_platform()


def register_general() -> None:
    """General plugin: op replacements and quantization config (idempotent)."""
    from vllm_ascend.plugin import register_all

    register_all()
