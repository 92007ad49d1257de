"""EPLB policies: the guard holds for every output, deepseek matches a plain reference
greedy and never duplicates an expert on a rank, incremental moves nothing when nothing
needs moving, the registry names what it has."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.eplb.conftest import configs, loads_for
from vllm_ascend.eplb.metrics import balancedness
from vllm_ascend.eplb.placement import round_robin_placement, validate_placement
from vllm_ascend.eplb.policies import (DEFAULT_POLICY, get_policy, list_policies,
                                       register_policy)
from vllm_ascend.eplb.policies.deepseek import deepseek
from vllm_ascend.eplb.policies.incremental import incremental


def reference_deepseek(loads: np.ndarray, num_ranks: int, num_slots: int) -> np.ndarray:
    """The same greedy, written plainly (float64, Python loops, one layer at a time)."""
    out = []
    for w in loads.astype(np.float64):
        num_experts = len(w)
        counts = [1] * num_experts
        for _ in range(num_slots - num_experts):
            best, best_share = None, -1.0
            for e in range(num_experts):
                if counts[e] < num_ranks and w[e] / counts[e] > best_share:
                    best, best_share = e, w[e] / counts[e]
            counts[best] += 1
        items = sorted(((w[e] / counts[e], e) for e in range(num_experts)
                        for _ in range(counts[e])), key=lambda t: (-t[0], t[1]))
        k = num_slots // num_ranks
        load, held = [0.0] * num_ranks, [[] for _ in range(num_ranks)]
        for share, e in items:
            open_ = [r for r in range(num_ranks) if len(held[r]) < k]
            free = [r for r in open_ if e not in held[r]] or open_
            r = min(free, key=lambda r: (load[r], r))
            load[r] += share
            held[r].append(e)
        out.append([e for r in range(num_ranks) for e in held[r]])
    return np.asarray(out, dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_policy_output_passes_the_guard(data):
    num_experts, num_ranks, num_slots = data.draw(configs())
    loads = data.draw(loads_for(3, num_experts))
    for name in list_policies():
        policy = get_policy(name)
        first = policy(loads, num_ranks, num_slots)
        assert first.shape == (3, num_slots) and first.dtype == np.int64
        assert validate_placement(first, num_experts, num_ranks) == [], name
        drifted = loads * data.draw(loads_for(3, num_experts)).clip(1, None) ** 0.3
        again = policy(drifted, num_ranks, num_slots, first)
        assert validate_placement(again, num_experts, num_ranks) == [], name


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_deepseek_matches_reference_greedy(data):
    num_experts, num_ranks, num_slots = data.draw(configs(max_experts=24))
    loads = data.draw(loads_for(2, num_experts))
    ours = deepseek(loads, num_ranks, num_slots)
    ref = reference_deepseek(loads, num_ranks, num_slots)
    if validate_placement(ref, num_experts, num_ranks):
        return  # the plain greedy got stuck on a duplicate; ours repairs it (other test)
    np.testing.assert_allclose(balancedness(ours, loads, num_ranks),
                               balancedness(ref, loads, num_ranks), atol=1e-9)


def test_deepseek_hand_worked_case():
    # counts [2, 2, 1, 1] -> shares 5 5 3 3 3 1 -> ranks {0, 1, 2} = 11 and {0, 1, 3} = 9.
    placement = deepseek(np.array([[10.0, 6.0, 3.0, 1.0]]), 2, 6)
    np.testing.assert_array_equal(placement, [[0, 1, 2, 0, 1, 3]])
    assert balancedness(placement, np.array([[10.0, 6.0, 3.0, 1.0]]), 2)[0] == pytest.approx(10 / 11)


def test_deepseek_repairs_vllm_duplicates():
    torch = pytest.importorskip("torch")
    default = pytest.importorskip("vllm.distributed.eplb.policy.default")
    loads = np.zeros((1, 8))
    loads[0, :2] = [100.0, 1.0]                  # zeros: vLLM piles replicas of one expert
    theirs = default.DefaultEplbPolicy.rebalance_experts(
        torch.from_numpy(loads), 16, 1, 1, 4).numpy()
    assert any("holds expert" in p for p in validate_placement(theirs, 8, 4))
    ours = deepseek(loads, 4, 16)
    assert validate_placement(ours, 8, 4) == []
    assert balancedness(ours, loads, 4)[0] >= balancedness(theirs, loads, 4)[0] - 1e-12


def test_deepseek_keeps_unchanged_experts_in_their_slot():
    rng = np.random.default_rng(1)
    loads = rng.gamma(0.7, 100.0, size=(4, 32))
    first = deepseek(loads, 8, 40)
    again = deepseek(loads, 8, 40, current=np.roll(first.reshape(4, 8, 5), 2, axis=2)
                     .reshape(4, 40))
    assert (again != np.roll(first.reshape(4, 8, 5), 2, axis=2).reshape(4, 40)).sum() == 0


def test_incremental_without_current_is_deepseek():
    loads = np.random.default_rng(2).gamma(0.7, 100.0, size=(3, 64))
    np.testing.assert_array_equal(incremental(loads, 8, 72), deepseek(loads, 8, 72))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_incremental_moves_nothing_at_its_fixed_point(data):
    num_experts, num_ranks, num_slots = data.draw(configs())
    loads = data.draw(loads_for(2, num_experts))
    placement = incremental(loads, num_ranks, num_slots)
    for _ in range(20):
        nxt = incremental(loads, num_ranks, num_slots, placement)
        if (nxt == placement).all():
            break
        placement = nxt
    assert (incremental(loads, num_ranks, num_slots, placement) != placement).sum() == 0


def test_incremental_moves_nothing_when_balanced():
    loads = np.full((2, 32), 5.0)
    current = round_robin_placement(2, 32, 8)
    assert (incremental(loads, 8, 32, current) != current).sum() == 0


def test_incremental_moves_little_under_small_drift():
    rng = np.random.default_rng(3)
    loads = rng.gamma(0.7, 100.0, size=(4, 64))
    current = incremental(loads, 16, 80, incremental(loads, 16, 80))
    drifted = loads * rng.uniform(0.97, 1.03, size=loads.shape)
    moved = (incremental(drifted, 16, 80, current) != current).mean()
    assert moved <= 0.25


def test_bad_arguments_name_the_field():
    loads = np.ones((2, 8))
    with pytest.raises(ValueError, match="num_slots must be a multiple of num_ranks"):
        deepseek(loads, 3, 8)
    with pytest.raises(ValueError, match="loads must be"):
        deepseek(np.ones(8), 2, 8)
    with pytest.raises(ValueError, match="current must be"):
        incremental(loads, 2, 8, np.zeros((2, 10), dtype=np.int64))
    with pytest.raises(ValueError, match="lost"):
        incremental(loads, 2, 8, np.zeros((2, 8), dtype=np.int64))


def test_registry_lists_names_and_rejects_duplicates():
    assert {"deepseek", "incremental"} <= set(list_policies())
    assert DEFAULT_POLICY in list_policies()
    with pytest.raises(ValueError, match=r"unknown EPLB policy 'nope'; registered: .*deepseek.*incremental"):
        get_policy("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_policy("deepseek")(lambda loads, num_ranks, num_slots, current=None: None)
