"""The CPU-hosted platform: vLLM's CPU platform running the plugin's layers on the reference backend.

Its enum stays ``PlatformEnum.CPU`` (vLLM's CPU worker and model runner check
``is_cpu()``); the plugin's identity is this class and its communicator.
"""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform

from vllm_ascend.platform.common import log_startup, validate_additional_config


class AscendCPUPlatform(CpuPlatform):
    """vLLM's CpuPlatform + the Ascend plugin's ops (reference backend) and communicator."""

    device_backend = "reference"

    @classmethod
    def log_warnings(cls) -> None:
        """vLLM calls this in every process once logging is configured: the startup line."""
        super().log_warnings()
        log_startup(cls.__name__, "cpu-hosted")

    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        super().check_and_update_config(vllm_config)
        validate_additional_config(vllm_config)
        # Imported here: it imports vLLM layers, which need the platform this module defines.
        from vllm_ascend.quantization.detect import maybe_enable_ascend_quantization

        maybe_enable_ascend_quantization(vllm_config)
        from vllm_ascend.shared_weight.activate import configure_layer_sharding

        configure_layer_sharding(vllm_config)
        from vllm_ascend.worker.cpu_worker import VLLM_CPU_WORKER_CLS, WORKER_CLS

        parallel = vllm_config.parallel_config
        if parallel.worker_cls in ("auto", VLLM_CPU_WORKER_CLS):
            parallel.worker_cls = WORKER_CLS  # vLLM's CPU worker + the EPLB step hooks
        log_startup(cls.__name__, "cpu-hosted")

    @classmethod
    def get_pass_manager_cls(cls) -> str:
        """vLLM's pass manager + the plugin's norm/activation + quant fusion (compilation/)."""
        from vllm_ascend.compilation.pass_manager import QUALNAME

        return QUALNAME

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return "vllm_ascend.distributed.cpu_communicator.AscendCPUCommunicator"
