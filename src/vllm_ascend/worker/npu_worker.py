"""NPUWorker: vLLM's GPU ``Worker`` with Ascend device setup and memory profiling.

Overridden (the parts of ``gpu_worker.Worker`` that name CUDA on the startup path):

- :meth:`NPUWorker.init_device`: the parent accepts only ``device_type == "cuda"``. Here:
  DP-adjusted local rank, ``npu:<visible index>`` (``ASCEND_RT_VISIBLE_DEVICES``), the
  device set through the facade, the distributed environment on ``hccl``, then the
  initial memory snapshot.
- Memory profiling (:meth:`NPUWorker.determine_available_memory`): vLLM measures with
  ``torch.accelerator``; here :class:`NPUMemorySnapshot` reads ``device.mem_get_info``
  and the allocator statistics through the facade. No graph-memory estimate (the
  platform disables graph capture).
- :meth:`NPUWorker._maybe_get_memory_pool_context`: the parent hands out-of-tree
  platforms vLLM's CuMem allocator (sleep mode); Ascend has no sleep mode: a null context.

Still CUDA-specific, not overridden (not reached at startup on Ascend, or outside the
worker): the model runner is vLLM's ``GPUModelRunner`` (CUDA-graph capture, CUDA
streams/events on some paths; an NPU model runner is future work); ``sleep``/``wake_up``
(``torch.accelerator``; vLLM never calls them since ``is_sleep_mode_available()`` is
False for OOT platforms); ``compile_or_warm_up_model`` (its graph-capture step is skipped
because cudagraph mode is NONE); vLLM's split-group process-group init in
``parallel_state`` (``cpu:gloo,cuda:nccl``).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch
from vllm.config import set_current_vllm_config
from vllm.model_executor.model_loader import get_model_loader
from vllm.multimodal.gpu_ipc_memory import reserve_mm_ipc_gpu_memory
from vllm.utils.mem_utils import MemoryProfilingResult, MemorySnapshot, format_gib
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.startup_plan import maybe_apply_startup_plan
from vllm.v1.worker.utils import request_memory

from vllm_ascend.device import device as npu
from vllm_ascend.logger import logger
from vllm_ascend.platform.npu import NPUPlatform, device_fn
from vllm_ascend.worker.eplb_worker import EplbWorkerMixin


def torch_device(index: int) -> torch.device:
    """``npu:<index>`` (needs torch_npu, which registers the device type)."""
    return torch.device(f"{NPUPlatform.device_type}:{index}")


def dp_adjusted_local_rank(parallel_config, local_rank: int) -> int:
    """vLLM's rule: with several DP ranks on one node (not Ray / external launcher),
    rank ``r`` of DP-local rank ``d`` uses device ``d * (PP * PCP * TP) + r``."""
    if (
        parallel_config.distributed_executor_backend in ("ray", "external_launcher")
        or parallel_config.data_parallel_backend == "ray"
        or parallel_config.nnodes_within_dp != 1
    ):
        return local_rank
    dp_local_rank = parallel_config.data_parallel_rank_local
    if dp_local_rank is None:
        dp_local_rank = parallel_config.data_parallel_index
    per_dp = (parallel_config.pipeline_parallel_size
              * parallel_config.prefill_context_parallel_size
              * parallel_config.tensor_parallel_size)
    return local_rank + dp_local_rank * per_dp


class NPUMemorySnapshot(MemorySnapshot):
    """vLLM's MemorySnapshot measured through the facade (bytes).

    ``free_memory``/``total_memory`` come from ``device.mem_get_info``; the torch
    allocator figures (peak, allocated, reserved) from ``device.memory_stats`` /
    ``device.memory_reserved``, or 0 on the CPU stand-in, which has no allocator stats.
    """

    def measure(self) -> None:
        dev = self.device_
        stats_fn = device_fn("memory_stats")
        stats = stats_fn(dev) if stats_fn is not None else {}
        self.torch_peak = int(stats.get("allocated_bytes.all.peak", 0))
        self.torch_allocated = int(stats.get("allocated_bytes.all.current", 0))
        self.free_memory, self.total_memory = NPUPlatform.mem_get_info(dev)
        self.cuda_memory = self.total_memory - self.free_memory  # vLLM's name: device bytes in use
        reserved_fn = device_fn("memory_reserved")
        self.torch_memory = int(reserved_fn(dev)) if reserved_fn is not None else 0
        self.non_torch_memory = self.cuda_memory - self.torch_memory
        self.timestamp = time.time()


@contextlib.contextmanager
def npu_memory_profiling(baseline: MemorySnapshot,
                         weights_memory: int = 0) -> Iterator[MemoryProfilingResult]:
    """vLLM's ``memory_profiling`` with :class:`NPUMemorySnapshot` measurements.

    ``non_kv_cache_memory = total_consumed + transient_peak_headroom`` where
    ``total_consumed`` is the drop in free device memory since ``baseline`` and the
    headroom is the profiled peak above what stays allocated.
    """
    device = baseline.device_
    gc.collect()
    npu.empty_cache()
    reset = device_fn("reset_peak_memory_stats")
    if reset is not None:
        reset(device)
    result = MemoryProfilingResult(before_create=baseline, weights_memory=weights_memory)
    result.before_profile = NPUMemorySnapshot(device=device)
    yield result
    gc.collect()
    npu.empty_cache()
    result.after_profile = NPUMemorySnapshot(device=device)
    diff_profile = result.after_profile - result.before_profile
    result.torch_peak_increase = diff_profile.torch_peak
    result.non_torch_increase = (result.after_profile - baseline).non_torch_memory
    result.profile_time = diff_profile.timestamp
    result.total_consumed = baseline.free_memory - result.after_profile.free_memory
    result.transient_peak_headroom = (result.after_profile.torch_peak
                                      - result.after_profile.torch_allocated)
    result.non_kv_cache_memory = result.total_consumed + result.transient_peak_headroom


class NPUWorker(EplbWorkerMixin, Worker):
    """A vLLM worker process driving one Ascend NPU."""

    def init_device(self) -> None:
        parallel_config = self.parallel_config
        self.local_rank = dp_adjusted_local_rank(parallel_config, self.local_rank)
        assigned = parallel_config.assigned_physical_gpu_ids
        if assigned is not None:
            from vllm.platforms.interface import set_assigned_physical_gpu_ids

            set_assigned_physical_gpu_ids(assigned)
        visible = NPUPlatform.logical_device_id_to_visible_device_id(self.local_rank)
        self.device = torch_device(visible)
        NPUPlatform.set_device(self.device)
        NPUPlatform.check_if_supports_dtype(self.model_config.dtype)
        # Distributed first: HCCL buffers must exist before the memory snapshot.
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method, self.local_rank,
            NPUPlatform.dist_backend)
        set_random_seed(self.model_config.seed)
        gc.collect()
        NPUPlatform.empty_cache()
        external = get_model_loader(self.load_config).get_external_weight_memory(
            self.vllm_config)
        self.init_snapshot = NPUMemorySnapshot(device=self.device)
        self.requested_memory = request_memory(self.init_snapshot, self.cache_config, external)
        logger.debug("NPU worker init snapshot: %r", self.init_snapshot)
        self._init_workspace_and_model_runner()

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        return nullcontext()

    @torch.inference_mode()
    def determine_available_memory(self) -> int:
        """Bytes the KV cache may use: the requested share of device memory minus what
        the weights, non-torch memory and the profiled activation peak take."""
        maybe_apply_startup_plan(self)
        if self.cache_config.kv_cache_memory_bytes:
            return super().determine_available_memory()  # no profiling, nothing CUDA
        with (
            npu_memory_profiling(self.init_snapshot,
                                 weights_memory=int(self.model_runner.model_memory_usage))
            as result,
            set_current_vllm_config(self.vllm_config),
        ):
            self.model_runner.profile_run(randomize_inputs=self.randomize_dummy_inputs)
        return self._kv_cache_budget(result)

    def _kv_cache_budget(self, result: MemoryProfilingResult) -> int:
        if result.total_consumed < 0:
            raise RuntimeError(
                f"memory profiling measured free NPU memory growing from "
                f"{format_gib(self.init_snapshot.free_memory)} GiB to "
                f"{format_gib(result.after_profile.free_memory)} GiB: another process "
                "released device memory during startup; isolate vLLM on its NPUs")
        self.total_consumed = result.total_consumed
        self.peak_activation_memory = result.transient_peak_headroom
        self.cudagraph_memory_estimate = 0
        self.available_kv_cache_memory_bytes = (self.requested_memory
                                                - result.non_kv_cache_memory)
        logger.info("Available KV cache memory: %s GiB (%r)",
                    format_gib(self.available_kv_cache_memory_bytes), result)
        return reserve_mm_ipc_gpu_memory(
            int(self.available_kv_cache_memory_bytes),
            self.model_config.multimodal_config,
            getattr(self.parallel_config, "_api_process_count", 1),
        )
