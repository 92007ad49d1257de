"""The planner is a real OS process: it blocks on its queue, answers, and its death shows."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from vllm_ascend.eplb.placement import validate_placement
from vllm_ascend.eplb.planner import PlannerProcess, PlanRequest, plan
from vllm_ascend.eplb.slots import linear_placement
from vllm_ascend.eplb.transfer import slots_moved


def _request(rid=1, policy="deepseek", layers=3, experts=16, ranks=2, slots=20, seed=0):
    rng = np.random.default_rng(seed)
    loads = rng.gamma(0.5, 100.0, size=(layers, experts))
    current = np.tile(linear_placement(experts, ranks, slots), (layers, 1))
    return PlanRequest(rid, policy, loads, current, ranks, slots)


def _wait(planner, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = planner.poll()
        if r is not None:
            return r
        time.sleep(0.05)
    raise AssertionError("no planner result")


def test_plan_in_process_is_valid_and_plans_match():
    req = _request()
    res = plan(req)
    assert res.error is None and res.placement.shape == req.current.shape
    assert validate_placement(res.placement, 16, 2, num_slots=20) == []
    for old, new, p in zip(req.current, res.placement, res.plans):
        if p is None:
            assert np.array_equal(old, new)
        else:
            assert np.array_equal(p.apply(old), new) and len(p) == slots_moved(old, new)


def test_policy_error_is_reported_not_raised():
    res = plan(_request(policy="no-such-policy"))
    assert res.placement is None and "no-such-policy" in res.error


def test_process_answers_blocks_idle_and_dies_visibly():
    planner = PlannerProcess()
    planner.start()
    try:
        assert planner.alive() and planner.pid != os.getpid()
        assert planner.poll() is None  # nothing asked yet: answers at once, empty
        for rid in (1, 2):
            planner.submit(_request(rid, "incremental", seed=rid))
        got = [_wait(planner).request_id, _wait(planner).request_id]
        assert got == [1, 2]
        # Idle, every thread of it sleeps (blocked in recv(), no spinning BLAS pool).
        tasks = os.listdir(f"/proc/{planner.pid}/task")
        assert len(tasks) == 1, tasks
        states = []
        for _ in range(20):
            with open(f"/proc/{planner.pid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
            time.sleep(0.05)
        assert set(states) == {"S"}, states
        os.kill(planner.pid, signal.SIGKILL)
        planner.proc.wait(timeout=10)
        assert not planner.alive() and planner.exit_status() == -signal.SIGKILL
        assert planner.poll() is None  # a dead child's pipe reads as "nothing"
    finally:
        planner.stop()
    assert not planner.alive()
