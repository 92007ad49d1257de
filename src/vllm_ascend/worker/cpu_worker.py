"""The CPU-hosted platform's worker: vLLM's CPU worker plus the plugin's EPLB step hooks, in
eager mode the norm + per-token quant fusion of ``quantization.norm_quant``, and the test-only
decode slowdown (:mod:`vllm_ascend.worker.step_delay`)."""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker

from vllm_ascend.worker.eplb_worker import EplbWorkerMixin
from vllm_ascend.worker.step_delay import DecodeSlowdownMixin

#: vLLM's CPU worker, which the platform replaces by :data:`WORKER_CLS`.
VLLM_CPU_WORKER_CLS = "vllm.v1.worker.cpu_worker.CPUWorker"
WORKER_CLS = "vllm_ascend.worker.cpu_worker.AscendCPUWorker"


class AscendCPUWorker(DecodeSlowdownMixin, EplbWorkerMixin, CPUWorker):
    """``CPUWorker`` with :class:`EplbWorkerMixin` (a no-op unless EPLB is enabled) and the
    test-only :class:`DecodeSlowdownMixin` (a no-op unless its variable is set)."""

    def load_model(self, *args, **kwargs):
        from vllm_ascend.compilation.pass_manager import install_for_plain_inductor

        install_for_plain_inductor(self.vllm_config)  # before the model's compile wrapper
        out = super().load_model(*args, **kwargs)
        from vllm.config import CompilationMode

        if self.vllm_config.compilation_config.mode == CompilationMode.NONE:
            # compiled models get the fusion from the graph pass (compilation/fusion.py)
            from vllm_ascend.quantization import norm_quant

            norm_quant.enable(self.model_runner.get_model())
        return out
