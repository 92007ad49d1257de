"""The worker side of dynamic EPLB: build the runtime after loading, step it around forwards.

:class:`EplbWorkerMixin` goes in front of a vLLM worker class (the CPU-hosted platform's
:class:`~vllm_ascend.worker.cpu_worker.AscendCPUWorker`, the NPU platform's ``NPUWorker``).
It overrides three public worker methods and nothing else:

- ``load_model``: after vLLM has loaded and processed the weights, build
  :class:`~vllm_ascend.eplb.runtime.EplbRuntime` (None when EPLB is off: the worker then
  behaves exactly like its base class);
- ``execute_model`` / ``execute_dummy_batch``: ``before_step`` before the forward pass,
  ``after_step`` after it (a dummy batch, which DP ranks without work run to keep the EP
  collectives in step, is counted as a step but its loads are not recorded).
"""

from __future__ import annotations

from vllm_ascend.logger import logger


def step_kind(scheduler_output) -> str:
    """"decode" when every scheduled request advances by one token, else "prefill"."""
    counts = getattr(scheduler_output, "num_scheduled_tokens", None) or {}
    if getattr(scheduler_output, "scheduled_new_reqs", None) or \
            any(n != 1 for n in counts.values()):
        return "prefill"
    return "decode"


class EplbWorkerMixin:
    eplb = None  # vllm_ascend.eplb.runtime.EplbRuntime, or None (EPLB off)

    def load_model(self, *args, **kwargs):
        out = super().load_model(*args, **kwargs)
        from vllm_ascend.eplb.runtime import EplbRuntime

        self.eplb = EplbRuntime.from_model(self.vllm_config, self.model_runner.get_model())
        return out

    def execute_model(self, scheduler_output):
        rt = self.eplb
        if rt is None or not rt.enabled or scheduler_output.total_num_scheduled_tokens == 0:
            return super().execute_model(scheduler_output)
        rt.before_step(step_kind(scheduler_output))
        try:
            return super().execute_model(scheduler_output)
        finally:
            rt.after_step()

    def execute_dummy_batch(self):
        rt = self.eplb
        if rt is None or not rt.enabled:
            return super().execute_dummy_batch()
        rt.before_step(None)
        try:
            return super().execute_dummy_batch()
        finally:
            rt.after_step()

    def shutdown(self):
        if self.eplb is not None:
            try:
                self.eplb.close()
            except Exception as e:  # noqa: BLE001 - never block the worker's shutdown
                logger.warning("EPLB: closing the planner failed: %s", e)
        return super().shutdown()
