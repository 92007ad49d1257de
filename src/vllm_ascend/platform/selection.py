"""Which platform the plugin provides to vLLM, decided by a pure function.

vLLM calls the platform plugin (:func:`vllm_ascend.register`) during detection and
again to resolve the winner, in every process; it must be side-effect free.

Decision (``VLLM_ASCEND_PLATFORM``):

=========  =================================================================
``npu``    NPUPlatform; an error if torch_npu or a device is missing
``cpu``    the CPU-hosted platform, whatever else the machine has
``off``    stay out: vLLM picks its own platform (vanilla vLLM)
``auto``   NPU if usable; else stay out if vLLM finds a GPU or other
           accelerator; else the CPU-hosted platform
=========  =================================================================
"""

from __future__ import annotations



from vllm_ascend.envs import PLATFORM_ENV, AscendConfigError, platform_mode

from vllm_ascend.logger import logger

NPU_PLATFORM = "vllm_ascend.platform.npu.NPUPlatform"
CPU_PLATFORM = "vllm_ascend.platform.cpu.AscendCPUPlatform"

#: vLLM's built-in detectors for devices that should keep their own platform.
_OTHER_ACCELERATORS = ("cuda", "rocm", "tpu", "xpu")


def choose_platform(mode: str, npu_usable: bool, other_accelerator: str | None) -> str | None:
    """Pure decision: the platform class qualname, or None to leave vLLM alone."""
    if mode == "off":
        return None
    if mode == "npu":
        if not npu_usable:
            raise AscendConfigError(
                f"{PLATFORM_ENV}=npu but no usable Ascend NPU: torch_npu cannot be imported "
                "or no device is present; use 'cpu' for the reference backend or 'auto'"
            )
        return NPU_PLATFORM
    if mode == "cpu":
        return CPU_PLATFORM
    if mode == "auto":
        if npu_usable:
            return NPU_PLATFORM
        if other_accelerator is not None:
            return None
        return CPU_PLATFORM
    raise AscendConfigError(f"unknown platform mode {mode!r}")


def detect_other_accelerator() -> str | None:
    """Name of a non-CPU device vLLM's own detectors find (cuda, rocm, tpu, xpu), or None."""
    from vllm.platforms import builtin_platform_plugins

    for name in _OTHER_ACCELERATORS:
        detector = builtin_platform_plugins.get(name)
        if detector is None:
            continue
        try:
            if detector() is not None:
                return name
        except Exception:  # a broken driver is not our platform either
            logger.debug("vLLM's %s detector failed", name, exc_info=True)
    return None


def resolve_platform() -> str | None:
    """Entry point body: read the environment, probe the devices, decide."""
    from vllm_ascend.device import facade

    try:
        mode = platform_mode()
        if mode == "off":
            return None
        npu = facade.npu_available()
        other = None if (npu or mode != "auto") else detect_other_accelerator()
        return choose_platform(mode, npu, other)
    except AscendConfigError as e:
        # vLLM swallows platform-plugin errors; say it loudly (the general plugin raises too).
        logger.error("vllm-ascend: %s", e)
        raise
