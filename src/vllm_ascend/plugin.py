"""Body of the general plugin (``vllm.general_plugins``), run in every vLLM process."""

from __future__ import annotations


def register_all() -> None:
    """Validate the plugin's settings loudly, then register what the active platform needs.

    When the plugin is off (``VLLM_ASCEND_PLATFORM=off``, or another accelerator in auto
    mode) nothing is registered: vLLM runs exactly as without the plugin.
    """
    from vllm_ascend.platform.selection import resolve_platform

    platform = resolve_platform()
    if platform is None:
        return
    from vllm_ascend.device import ops
    from vllm_ascend.ops.registry import register_ops
    from vllm_ascend.quantization import register as register_quantization

    ops.bind()
    register_ops()
    register_quantization()
    from vllm_ascend.shared_weight.loader import register_loader

    register_loader()
    # vLLM runs general plugins in every process it starts (API server, engine core,
    # workers); the platform's check_and_update_config only in the one that builds the
    # config. Logging here makes the startup line true for every process.
    from vllm_ascend.platform.common import log_startup
    from vllm_ascend.platform.selection import NPU_PLATFORM

    log_startup(platform.rsplit(".", 1)[-1], "npu" if platform == NPU_PLATFORM else "cpu-hosted")
