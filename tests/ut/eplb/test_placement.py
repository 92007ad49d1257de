"""The placement guard names each kind of problem; replica maps and choose_replica."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.eplb.conftest import configs, loads_for
from vllm_ascend.eplb.metrics import balancedness, rank_loads
from vllm_ascend.eplb.placement import (PlacementError, check_placement, choose_replica,
                                        choose_replica_np, logical_to_replicas,
                                        round_robin_placement, validate_placement)
from vllm_ascend.eplb.policies.deepseek import deepseek

GOOD = np.array([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 2, 3]])  # E=4, W=2, S=6


def test_valid_placement_has_no_problems():
    assert validate_placement(GOOD, 4, 2) == []
    check_placement(GOOD, 4, 2)


def test_lost_expert_is_named():
    bad = GOOD.copy()
    bad[1] = [0, 1, 2, 0, 1, 2]
    assert validate_placement(bad, 4, 2) == ["layer 1: logical expert(s) 3 lost (no slot holds them)"]


def test_two_replicas_on_one_rank_name_rank_and_expert():
    bad = GOOD.copy()
    bad[0] = [0, 1, 2, 3, 3, 1]
    problems = validate_placement(bad, 4, 2)
    assert problems == ["layer 0: rank 1 holds expert 3 2 times (slots 3, 4)"]


def test_wrong_slot_count_and_out_of_range_id():
    rows = [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3]]
    assert validate_placement(rows, 4, 2) == ["layer 1: 4 slots, expected 6 (2 ranks x 3)"]
    assert "multiple of num_ranks" in validate_placement(GOOD, 4, 4)[0]
    bad = GOOD.copy()
    bad[0, 5] = 9
    assert "layer 0: slot 5 holds expert id 9, outside [0, 4)" in validate_placement(bad, 4, 2)


def test_layer_ids_name_layers_and_check_raises():
    bad = GOOD.copy()
    bad[1] = -1
    with pytest.raises(PlacementError, match="layer 7: slot 0 holds expert id -1") as info:
        check_placement(bad, 4, 2, layer_ids=[3, 7])
    assert isinstance(info.value, ValueError) and info.value.problems


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_logical_to_replicas_lists_each_experts_slots(data):
    num_experts, num_ranks, num_slots = data.draw(configs())
    placement = deepseek(data.draw(loads_for(2, num_experts)), num_ranks, num_slots)
    replicas, counts = logical_to_replicas(placement, num_experts)
    assert replicas.shape[:2] == (2, num_experts)
    for layer in range(2):
        for e in range(num_experts):
            slots = np.nonzero(placement[layer] == e)[0]
            assert counts[layer, e] == slots.size
            np.testing.assert_array_equal(replicas[layer, e, :slots.size], slots)
            assert (replicas[layer, e, slots.size:] == -1).all()
    one, one_counts = logical_to_replicas(placement[1], num_experts)
    width = one.shape[1]
    np.testing.assert_array_equal(one, replicas[1, :, :width])
    assert (replicas[1, :, width:] == -1).all()
    np.testing.assert_array_equal(one_counts, counts[1])


def test_choose_replica_is_deterministic_in_range_and_matches_numpy():
    loads = np.random.default_rng(0).gamma(0.5, 10, size=(1, 16))
    placement = deepseek(loads, 4, 24)[0]
    replicas, counts = logical_to_replicas(placement, 16)
    g = torch.Generator().manual_seed(0)
    topk = torch.randint(0, 16, (50, 4), generator=g)
    pos = torch.arange(50) + 1000
    rep_t, cnt_t = torch.from_numpy(replicas), torch.from_numpy(counts)
    slots = choose_replica(topk, pos, rep_t, cnt_t)
    assert slots.shape == (50, 4) and slots.dtype == torch.int64
    assert torch.equal(slots, choose_replica(topk, pos, rep_t, cnt_t))
    assert (slots >= 0).all() and (slots < 24).all()
    assert torch.equal(torch.from_numpy(placement)[slots], topk)   # the slot holds the expert
    np.testing.assert_array_equal(slots.numpy(),
                                  choose_replica_np(topk.numpy(), pos.numpy(), replicas, counts))
    hot = int(np.argmax(counts))
    picked = choose_replica(torch.full((counts[hot], 1), hot), torch.arange(counts[hot]),
                            rep_t, cnt_t)
    assert sorted(picked.ravel().tolist()) == replicas[hot, :counts[hot]].tolist()


def test_metrics():
    placement = round_robin_placement(1, 4, 2)                      # ranks {0,1} and {2,3}
    loads = np.array([[3.0, 1.0, 2.0, 2.0]])
    np.testing.assert_array_equal(rank_loads(placement, loads, 2), [[4.0, 4.0]])
    assert balancedness(placement, np.array([[4.0, 0, 0, 0]]), 2)[0] == pytest.approx(0.5)
    assert balancedness(placement, np.zeros((1, 4)), 2)[0] == 1.0
    split = np.array([[0, 1, 2, 0, 3, 1]])                          # experts 0, 1 on both ranks
    np.testing.assert_allclose(rank_loads(split, np.array([[4.0, 2, 1, 1]]), 2), [[4.0, 4.0]])
