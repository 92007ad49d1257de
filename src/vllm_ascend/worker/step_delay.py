"""TEST ONLY: a deliberate decode slowdown, so that ``bench ab`` can show a regression is
flagged (docs/benchmarks.md). Never set it outside such a demonstration.

:class:`DecodeSlowdownMixin` goes in front of a worker class. With
``VLLM_ASCEND_TEST_DECODE_SLOWDOWN=F`` (a fraction, :func:`vllm_ascend.envs.decode_slowdown`)
the worker sleeps ``F`` times the duration of each decode step's ``execute_model`` right after
it (prefill steps and empty steps are left alone). Unset or 0, ``execute_model`` is the base
class's, with one attribute read per step.
"""

from __future__ import annotations

import time

from vllm_ascend import envs
from vllm_ascend.logger import logger
from vllm_ascend.worker.eplb_worker import step_kind


class DecodeSlowdownMixin:
    _decode_slowdown: float | None = None  # read from the environment on the first step

    def execute_model(self, scheduler_output):
        if self._decode_slowdown is None:
            self._decode_slowdown = envs.decode_slowdown()
            if self._decode_slowdown:
                logger.warning("%s=%g: every decode step is deliberately slowed down "
                               "(test only)", envs.DECODE_SLOWDOWN_ENV, self._decode_slowdown)
        if not self._decode_slowdown or scheduler_output.total_num_scheduled_tokens == 0 \
                or step_kind(scheduler_output) != "decode":
            return super().execute_model(scheduler_output)
        start = time.perf_counter()
        out = super().execute_model(scheduler_output)
        time.sleep(self._decode_slowdown * (time.perf_counter() - start))
        return out
