"""Comm-method registry (names, duplicate guard, errors) and the selection rule."""

from __future__ import annotations

import pytest

from vllm_ascend.ops.fused_moe.comm import (
    MC2_MAX_TOKENS_PER_RANK,
    MoECommMethod,
    comm_method_names,
    get_comm_method,
    register_comm_method,
    select_comm_method,
)
from vllm_ascend.ops.fused_moe.comm.all2allv import All2AllVCommMethod
from vllm_ascend.ops.fused_moe.comm.allgather import AllGatherCommMethod
from vllm_ascend.ops.fused_moe.comm.mc2 import MC2CommMethod


def test_builtin_methods_registered_by_name():
    assert comm_method_names() == ["all2allv", "allgather", "mc2"]
    assert get_comm_method("allgather") is AllGatherCommMethod
    assert get_comm_method("all2allv") is All2AllVCommMethod
    assert get_comm_method("mc2") is MC2CommMethod
    for name in comm_method_names():
        cls = get_comm_method(name)
        assert issubclass(cls, MoECommMethod) and cls.name == name


def test_duplicate_name_raises_and_keeps_the_first():
    dup = r"'allgather' is already registered \(AllGatherCommMethod\)"
    with pytest.raises(ValueError, match=dup):
        @register_comm_method("allgather")
        class Impostor(AllGatherCommMethod):
            pass
    assert get_comm_method("allgather") is AllGatherCommMethod
    assert comm_method_names() == ["all2allv", "allgather", "mc2"]


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError) as err:
        get_comm_method("naive_multicast")
    msg = str(err.value)
    assert "unknown MoE communication method 'naive_multicast'" in msg
    assert "registered: all2allv, allgather, mc2" in msg


CAP = MC2_MAX_TOKENS_PER_RANK


@pytest.mark.parametrize(
    "ep_size, num_tokens, capacity, override, want",
    [
        (1, 0, CAP, None, "allgather"),
        (1, 10_000, CAP, None, "allgather"),  # one rank: allgather even for large batches
        (1, 1, CAP, "mc2", "mc2"),  # the override wins
        (2, 0, CAP, None, "mc2"),
        (2, CAP, CAP, None, "mc2"),  # the capacity is inclusive
        (2, CAP + 1, CAP, None, "all2allv"),
        (16, 1, CAP, None, "mc2"),
        (16, 4096, CAP, None, "all2allv"),
        (4, 100, 64, None, "all2allv"),  # a smaller capacity
        (4, 64, 64, None, "mc2"),
        (4, 1, 0, None, "all2allv"),  # capacity 0: MC2 never fits
        (4, 1, CAP, "allgather", "allgather"),
        (8, 10_000, CAP, "all2allv", "all2allv"),
    ],
)
def test_select_comm_method_truth_table(ep_size, num_tokens, capacity, override, want):
    assert select_comm_method(ep_size, num_tokens, capacity, override) == want


def test_select_comm_method_defaults_to_the_mc2_capacity():
    assert CAP == 256
    assert select_comm_method(2, 256) == "mc2"
    assert select_comm_method(2, 257) == "all2allv"


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, 1, CAP, "alltoall"), r"unknown MoE communication method 'alltoall'; "
                                  r"registered: all2allv, allgather, mc2"),
        ((0, 1, CAP, None), r"ep_size=0 must be >= 1"),
        ((2, -1, CAP, None), r"num_tokens=-1 must be >= 0"),
        ((2, 1, -1, None), r"max_tokens_per_rank_capacity=-1 must be >= 0"),
    ],
)
def test_select_comm_method_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        select_comm_method(*args)


def test_methods_need_experts_divisible_by_ep_size_and_mc2_needs_a_group():
    with pytest.raises(ValueError, match="num_experts=0 must be a positive multiple"):
        AllGatherCommMethod(None, 0)
    with pytest.raises(ValueError, match="mc2 needs an expert-parallel process group"):
        MC2CommMethod(None, 4)
    method = All2AllVCommMethod(None, 6)
    assert (method.ep_size, method.ep_rank, method.num_local_experts) == (1, 0, 6)
    assert method.local_expert_range == (0, 6)
