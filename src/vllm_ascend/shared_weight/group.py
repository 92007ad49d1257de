"""The sharding group: the data-parallel replicas that hold the same TP (and PP) rank.

A dedicated process group (not vLLM's DP group), so the weight broadcasts never queue
behind or interleave with vLLM's own DP collectives. ``group`` carries the broadcasts
(gloo on the CPU-hosted platform, the platform's backend on NPU); ``cpu_group`` (gloo)
carries the start-up metadata exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class ShardingGroup:
    """This rank's view of one sharding group: layer ``i`` of a series lives on group rank
    ``i % size``."""

    group: object
    cpu_group: object
    rank: int
    ranks: tuple[int, ...]  # global ranks, by group rank

    @property
    def size(self) -> int:
        return len(self.ranks)

    def owner(self, layer: int) -> int:
        """Group rank that stores layer ``layer`` of a series."""
        return layer % self.size

    def global_rank(self, group_rank: int) -> int:
        return self.ranks[group_rank]


def new_groups(rank_lists: list[tuple[int, ...]], backend: str) -> ShardingGroup | None:
    """Create one group per rank list (every process of the world calls this with the same
    lists, in the same order, as ``torch.distributed.new_group`` requires); returns this
    process's, or None when it is in none."""
    me, mine = dist.get_rank(), None
    for ranks in rank_lists:
        group = dist.new_group(list(ranks), backend=backend)
        cpu = group if backend == "gloo" else dist.new_group(list(ranks), backend="gloo")
        if me in ranks:
            mine = ShardingGroup(group, cpu, ranks.index(me), tuple(ranks))
    return mine


def dp_sharding_group(backend: str) -> ShardingGroup:
    """The group of vLLM's DP replicas holding this rank's TP / PP position (all ranks of
    the world must call this together, e.g. while loading the model)."""
    from vllm.distributed.parallel_state import get_dp_group, get_world_group

    world = get_world_group()
    lists: list = [None] * world.world_size
    dist.all_gather_object(lists, tuple(get_dp_group().ranks), group=world.cpu_group)
    group = new_groups(sorted(set(lists)), backend)
    assert group is not None, "this rank is in its own DP group"
    return group
