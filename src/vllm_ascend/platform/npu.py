"""NPUPlatform: vLLM's platform for Huawei Ascend NPUs (``PlatformEnum.OOT``).

Modelled on vLLM's CUDA platform. Device calls go through the facade's ``device``
object (``torch.npu`` on Ascend, the CPU stand-in elsewhere), never ``torch.npu``
directly, so the class imports and its device helpers run on any machine. The worker,
attention backend and communicator are named by qualified name and imported lazily by vLLM.

Choices: no torch.compile/graph capture yet (compilation mode NONE, cudagraph NONE,
``simple_compile_backend="eager"``); KV block size 128 unless the user sets one; LoRA and
MLA/sparse attention are not supported yet (NotImplementedError).
"""

from __future__ import annotations

import torch
from vllm.platforms.interface import Platform, PlatformEnum

from vllm_ascend.device import device as npu
from vllm_ascend.logger import logger
from vllm_ascend.platform.common import log_startup, validate_additional_config

WORKER_CLS = "vllm_ascend.worker.npu_worker.NPUWorker"
ATTENTION_BACKEND_CLS = "vllm_ascend.attention.npu_attention.AscendAttentionBackend"
COMMUNICATOR_CLS = "vllm_ascend.distributed.npu_communicator.NPUCommunicator"
#: KV cache tokens per block when the user sets none (FIA pages: multiple of 16, 128 advised).
DEFAULT_BLOCK_SIZE = 128
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def device_fn(name: str):
    """``device.<name>`` if the active backend has it, else None (the CPU stand-in lacks
    the allocator statistics and device properties)."""
    try:
        return getattr(npu, name)
    except AttributeError:
        return None


class NPUPlatform(Platform):
    _enum = PlatformEnum.OOT
    device_name: str = "npu"
    device_type: str = "npu"
    dispatch_key: str = "PrivateUse1"
    ray_device_key: str = "NPU"
    dist_backend: str = "hccl"
    device_control_env_var: str = "ASCEND_RT_VISIBLE_DEVICES"
    ray_noset_device_env_vars: list[str] = ["RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES"]
    simple_compile_backend: str = "eager"
    supported_quantization: list[str] = ["ascend", "compressed-tensors"]

    # ------------------------------------------------------------------ device helpers

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        fn = device_fn("get_device_name")
        return str(fn(device_id)) if fn is not None else "Ascend NPU (reference backend)"

    @classmethod
    def get_device_uuid(cls, device_id: int = 0) -> str:
        """The device's uuid if torch_npu reports one, else ``npu-<physical id>``."""
        fn = device_fn("get_device_properties")
        uuid = getattr(fn(device_id), "uuid", None) if fn is not None else None
        if uuid:
            return str(uuid)
        return f"npu-{cls.device_id_to_physical_device_id(device_id)}"

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return int(npu.mem_get_info(device_id)[1])

    @classmethod
    def mem_get_info(cls, device: torch.types.Device | None = None) -> tuple[int, int]:
        """(free, total) bytes of the device (host memory on the reference backend)."""
        free, total = npu.mem_get_info(device)
        return int(free), int(total)

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        npu.set_device(device)

    @classmethod
    def synchronize(cls) -> None:
        npu.synchronize()

    @classmethod
    def empty_cache(cls) -> None:
        npu.empty_cache()

    @classmethod
    def device_count(cls) -> int:
        return int(npu.device_count())

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        fn = device_fn("manual_seed_all")
        if fn is not None:  # the CPU stand-in has none: torch.manual_seed covers the host
            fn(seed)

    @classmethod
    def inference_mode(cls):
        return torch.inference_mode(mode=True)

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return True

    @classmethod
    def get_current_memory_usage(cls, device: torch.types.Device | None = None) -> float:
        """Peak allocator bytes since a reset (the process RSS on the reference backend)."""
        peak = device_fn("max_memory_allocated")
        if peak is None:
            import psutil

            return float(psutil.Process().memory_info().rss)
        npu.empty_cache()
        npu.reset_peak_memory_stats(device)
        return float(peak(device))

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"dtype {dtype} is not supported on Ascend NPUs; supported: "
                             + ", ".join(map(str, _SUPPORTED_DTYPES)))

    @classmethod
    def import_kernels(cls) -> None:
        """No vLLM C++ kernels on Ascend: operators come from the device facade."""

    # -------------------------------------------------------------------- config hooks

    @classmethod
    def pre_register_and_update(cls, parser=None) -> None:
        """Make ``--quantization ascend`` and ``--attention-backend ASCEND`` acceptable."""
        from vllm_ascend.attention.npu_attention import register_attention_backend

        register_attention_backend()
        if parser is None:
            return
        for action in getattr(parser, "_actions", ()):
            choices = getattr(action, "choices", None)
            if "--quantization" in action.option_strings and isinstance(choices, list):
                if "ascend" not in choices:
                    choices.append("ascend")

    @classmethod
    def log_warnings(cls) -> None:
        """vLLM calls this in every process once logging is configured: the startup line."""
        super().log_warnings()
        log_startup(cls.__name__, "npu")

    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        validate_additional_config(vllm_config)
        from vllm_ascend.quantization.detect import maybe_enable_ascend_quantization

        maybe_enable_ascend_quantization(vllm_config)
        from vllm_ascend.shared_weight.activate import configure_layer_sharding

        configure_layer_sharding(vllm_config)
        parallel_config = vllm_config.parallel_config
        if parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = WORKER_CLS
        cache_config = vllm_config.cache_config
        if cache_config is not None and not cache_config.user_specified_block_size:
            cache_config.block_size = DEFAULT_BLOCK_SIZE
        cls._disable_graphs(vllm_config)
        log_startup(cls.__name__, "npu")

    @classmethod
    def _disable_graphs(cls, vllm_config) -> None:
        """Eager execution: no torch.compile and no graph capture on Ascend yet."""
        from vllm.config import CompilationMode, CUDAGraphMode

        compilation = vllm_config.compilation_config
        if compilation.mode != CompilationMode.NONE or (
                compilation.cudagraph_mode != CUDAGraphMode.NONE):
            logger.info("vllm-ascend: torch.compile and graph capture are not supported "
                        "on Ascend yet; running eagerly")
        compilation.mode = CompilationMode.NONE
        compilation.cudagraph_mode = CUDAGraphMode.NONE
        compilation.cudagraph_capture_sizes = []

    # ---------------------------------------------------------------- component names

    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config,
                             num_heads: int | None = None) -> str:
        if attn_selector_config.use_mla:
            raise NotImplementedError("MLA (multi-head latent) attention is not supported "
                                      "on Ascend yet")
        if attn_selector_config.use_sparse:
            raise NotImplementedError("sparse attention is not supported on Ascend yet")
        if selected_backend is not None and selected_backend.name != "ASCEND":
            raise ValueError(f"attention backend {selected_backend.name} is not available on "
                             "Ascend; use ASCEND or leave --attention-backend unset")
        from vllm_ascend.attention.npu_attention import AscendAttentionBackend

        reasons = AscendAttentionBackend.validate_configuration(
            device_capability=None, **attn_selector_config._asdict())
        if reasons:
            raise ValueError(f"the Ascend attention backend cannot serve this layer "
                             f"({attn_selector_config!r}): {'; '.join(reasons)}")
        return ATTENTION_BACKEND_CLS

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return COMMUNICATOR_CLS

    @classmethod
    def get_punica_wrapper(cls) -> str:
        raise NotImplementedError("LoRA is not supported on Ascend yet")
