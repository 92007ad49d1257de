"""Transfer plans: applying the plan to old gives new, every source holds its expert,
local copies are preferred, sends and receives agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.eplb.conftest import configs, loads_for
from vllm_ascend.eplb.policies import get_policy
from vllm_ascend.eplb.transfer import plan_layer, plan_transfers, slots_moved


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_plan_turns_old_into_new(data):
    num_experts, num_ranks, num_slots = data.draw(configs())
    old = get_policy("deepseek")(data.draw(loads_for(2, num_experts)), num_ranks, num_slots)
    new = get_policy(data.draw(st.sampled_from(["deepseek", "incremental"])))(
        data.draw(loads_for(2, num_experts)), num_ranks, num_slots, old)
    plans = plan_transfers(old, new, num_ranks)
    np.testing.assert_array_equal(slots_moved(old, new), [len(p) for p in plans])
    k = num_slots // num_ranks
    for o, n, plan in zip(old, new, plans):
        np.testing.assert_array_equal(plan.apply(o), n)
        assert (o[plan.src_slot] == plan.expert).all()               # sources hold the expert
        assert (plan.src_slot // k == plan.src_rank).all()
        assert (n[plan.dst_slot] == plan.expert).all() and (o[plan.dst_slot] != plan.expert).all()
        for d, e, r in zip(plan.dst_slot, plan.expert, plan.src_rank):
            if (o[(d // k) * k:(d // k + 1) * k] == e).any():
                assert r == d // k                                   # local copy preferred
        sends = sorted((r, *s) for r in range(num_ranks) for s in plan.sends(r))
        recvs = [x for r in range(num_ranks) for x in plan.receives(r)]
        assert len(sends) == len(recvs) == int((~plan.local).sum())
        pairs_s = sorted((r, to, e) for (r, to, _, e) in sends)
        pairs_r = sorted((src, dst_rank, e) for dst_rank in range(num_ranks)
                         for (_, src, e) in plan.receives(dst_rank))
        assert pairs_s == pairs_r
        local = sum(len(plan.local_copies(r)) for r in range(num_ranks))
        assert local + len(sends) == len(plan)


def test_hand_worked_plan():
    old = np.array([0, 1, 2, 3, 0, 1])         # rank 0: {0,1,2}, rank 1: {3,0,1}
    new = np.array([0, 3, 2, 1, 0, 2])         # slot 1 <- 3 (from rank 1), slot 3 <- 1 (local), slot 5 <- 2
    plan = plan_layer(old, new, 2)
    np.testing.assert_array_equal(plan.dst_slot, [1, 3, 5])
    np.testing.assert_array_equal(plan.src_rank, [1, 1, 0])
    np.testing.assert_array_equal(plan.src_slot, [3, 5, 2])
    assert plan.sends(0) == [(1, 2, 2)] and plan.receives(0) == [(1, 1, 3)]
    assert plan.local_copies(1) == [(0, 2, 1)]
    assert slots_moved(old, new) == 3


def test_plan_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one shape"):
        plan_layer(np.arange(4), np.arange(6), 2)
    with pytest.raises(ValueError, match="held by no slot"):
        plan_layer(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 9]), 2)
