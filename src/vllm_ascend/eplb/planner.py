"""The EPLB planner: a separate OS process that turns expert loads into a placement and plans.

The serving process never waits for it. :class:`PlannerProcess` starts
``python -m vllm_ascend.eplb.planner`` with two pipes wrapped as
``multiprocessing.connection`` connections (a queue in each direction):

- the client :meth:`~PlannerProcess.submit` s a :class:`PlanRequest` and later
  :meth:`~PlannerProcess.poll` s (non-blocking) for the :class:`PlanResult`;
- the child blocks in ``recv()`` (no busy-spin), runs the policy (a pure function of
  numpy arrays) and :func:`~vllm_ascend.eplb.transfer.plan_layer` per layer, and
  sends the result back; EOF on its input (the server stopped) ends it.

The child imports numpy and the pure EPLB modules only (no torch, no vLLM), so it starts
in well under a second. Its death is seen by :meth:`PlannerProcess.alive` (the runtime
checks at every rebalance interval).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np


@dataclass(frozen=True)
class PlanRequest:
    """loads ``(L, E)`` float64 token counts per logical expert; current ``(L, S)`` int64."""

    request_id: int
    policy: str
    loads: np.ndarray
    current: np.ndarray
    num_ranks: int
    num_slots: int


@dataclass(frozen=True)
class PlanResult:
    """placement ``(L, S)`` int64; plans: one transfer plan per layer (None: unchanged)."""

    request_id: int
    placement: np.ndarray | None
    plans: list = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def plan(req: PlanRequest) -> PlanResult:
    """Run the policy and the per-layer transfer planning (what the child process does)."""
    from vllm_ascend.eplb.policies import get_policy
    from vllm_ascend.eplb.transfer import plan_layer

    t0 = time.perf_counter()
    try:
        placement = np.asarray(get_policy(req.policy)(req.loads, req.num_ranks, req.num_slots,
                                                      req.current), dtype=np.int64)
        if placement.shape != req.current.shape:
            raise ValueError(f"policy {req.policy!r} returned shape {placement.shape}, "
                             f"expected {req.current.shape}")
        plans = [None if np.array_equal(old, new) else
                 plan_layer(old, new, req.num_ranks)
                 for old, new in zip(req.current, placement)]
    except Exception:  # noqa: BLE001 - reported to the serving process, which logs it
        return PlanResult(req.request_id, None, [], time.perf_counter() - t0,
                          traceback.format_exc(limit=8))
    return PlanResult(req.request_id, placement, plans, time.perf_counter() - t0)


class PlannerProcess:
    """Client of one planner child process (see the module docstring)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        to_r, to_w = os.pipe()      # parent writes requests, child reads
        from_r, from_w = os.pipe()  # child writes results, parent reads
        env = dict(os.environ)
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        # One thread: the policy is small vectorised numpy, the cores belong to serving,
        # and an idle BLAS pool would spin-wait.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm_ascend.eplb.planner", str(to_r), str(from_w)],
            pass_fds=(to_r, from_w), env=env, stdin=subprocess.DEVNULL, close_fds=True)
        os.close(to_r)
        os.close(from_w)
        self._to_child = Connection(to_w, readable=False)
        self._from_child = Connection(from_r, writable=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def submit(self, req: PlanRequest) -> None:
        """Queue a request (the pipe buffers it; the child may still be busy)."""
        if self._to_child is None:
            raise RuntimeError("EPLB planner not started")
        self._to_child.send(req)

    def poll(self) -> PlanResult | None:
        """The next finished result, or None at once if there is none yet."""
        if self._from_child is None:
            return None
        try:
            if self._from_child.poll(0):
                return self._from_child.recv()
        except (EOFError, OSError):
            return None
        return None

    def wait(self, timeout: float) -> PlanResult | None:
        """Block up to ``timeout`` s for a result (stop-the-world mode only)."""
        if self._from_child is not None and self._from_child.poll(timeout):
            try:
                return self._from_child.recv()
            except (EOFError, OSError):
                return None
        return None

    def stop(self) -> None:
        for conn in (self._to_child, self._from_child):
            if conn is not None:
                conn.close()
        self._to_child = self._from_child = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _child(read_fd: int, write_fd: int) -> int:
    requests = Connection(read_fd, writable=False)
    results = Connection(write_fd, readable=False)
    while True:
        try:
            req = requests.recv()  # blocks until the server sends work
        except EOFError:
            return 0
        results.send(plan(req))


if __name__ == "__main__":
    # Run the module's own copy (not __main__'s) so results pickle as
    # vllm_ascend.eplb.planner.PlanResult, which the serving process can load.
    from vllm_ascend.eplb import planner as _module

    sys.exit(_module._child(int(sys.argv[1]), int(sys.argv[2])))
