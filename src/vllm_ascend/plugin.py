"""Body of the general plugin (``vllm.general_plugins``), run in every vLLM process."""

from __future__ import annotations


def register_all() -> None:
    """Validate the plugin's settings loudly, then register what the active platform needs.

    When the plugin is off (``VLLM_ASCEND_PLATFORM=off``, or another accelerator in auto
    mode) nothing is registered: vLLM runs exactly as without the plugin.
    """
    from vllm_ascend.platform.selection import resolve_platform

    if resolve_platform() is None:
        return
    from vllm_ascend.device import ops
    from vllm_ascend.ops.registry import register_ops
    from vllm_ascend.quantization import register as register_quantization

    ops.bind()
    register_ops()
    register_quantization()
