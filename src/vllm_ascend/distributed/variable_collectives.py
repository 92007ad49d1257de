"""``all_gatherv`` and ``reduce_scatterv``: collectives with per-rank sizes, on any backend.

vLLM's MoE data/expert-parallel paths call these on the device communicator; its CPU
communicator does not implement them. These versions use only ``all_gather`` and
``all_reduce`` of torch.distributed, so they run on gloo (CPU) and hccl alike.

``sizes[r]`` is rank r's extent along ``dim``; None means equal sizes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _check_sizes(sizes: list[int] | None, world_size: int, what: str) -> None:
    if sizes is not None and (len(sizes) != world_size or any(s < 0 for s in sizes)):
        raise ValueError(
            f"{what}: sizes must list {world_size} non-negative extents (one per rank), got {sizes}"
        )


def all_gatherv(
    input_: torch.Tensor | list[torch.Tensor],
    group: dist.ProcessGroup,
    dim: int = 0,
    sizes: list[int] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Concatenate every rank's tensor along ``dim`` (rank order); a list gathers each."""
    if isinstance(input_, (list, tuple)):
        return [all_gatherv(t, group, dim, sizes) for t in input_]
    world = dist.get_world_size(group)
    _check_sizes(sizes, world, "all_gatherv")
    dim = dim % input_.dim() if input_.dim() else 0
    if sizes is None:
        sizes = [input_.shape[dim]] * world
    rank = dist.get_rank(group)
    if input_.shape[dim] != sizes[rank]:
        raise ValueError(
            f"all_gatherv: rank {rank} holds {input_.shape[dim]} rows along dim {dim}, "
            f"sizes says {sizes[rank]}"
        )
    if world == 1:
        return input_
    # Pad every rank to the largest extent, gather, then cut the padding out.
    longest = max(sizes)
    moved = input_.movedim(dim, 0)
    padded = moved.new_zeros((longest,) + tuple(moved.shape[1:]))
    padded[: moved.shape[0]] = moved
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    out = torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)
    return out.movedim(0, dim).contiguous()


def reduce_scatterv(
    input_: torch.Tensor,
    group: dist.ProcessGroup,
    dim: int = -1,
    sizes: list[int] | None = None,
) -> torch.Tensor:
    """Sum ``input_`` over ranks, then give rank r its slice of ``sizes[r]`` along ``dim``."""
    world = dist.get_world_size(group)
    _check_sizes(sizes, world, "reduce_scatterv")
    dim = dim % input_.dim()
    total = input_.shape[dim]
    if sizes is None:
        if total % world:
            raise ValueError(
                f"reduce_scatterv: extent {total} along dim {dim} does not split evenly "
                f"over {world} ranks; pass sizes"
            )
        sizes = [total // world] * world
    if sum(sizes) != total:
        raise ValueError(f"reduce_scatterv: sizes {sizes} sum to {sum(sizes)}, extent is {total}")
    if world == 1:
        return input_
    summed = input_.clone()
    dist.all_reduce(summed, group=group)
    rank = dist.get_rank(group)
    start = sum(sizes[:rank])
    return summed.narrow(dim, start, sizes[rank]).contiguous()


class VariableCollectivesMixin:
    """``all_gatherv`` / ``reduce_scatterv`` for a vLLM device communicator (uses ``device_group``)."""

    device_group: dist.ProcessGroup

    def all_gatherv(
        self,
        input_: torch.Tensor | list[torch.Tensor],
        dim: int = 0,
        sizes: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Concatenate every rank's tensor along ``dim``; ``sizes[r]`` is rank r's extent."""
        return all_gatherv(input_, self.device_group, dim, sizes)

    def reduce_scatterv(
        self, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        """Sum over ranks, then keep this rank's ``sizes[rank]`` slice along ``dim``."""
        return reduce_scatterv(input_, self.device_group, dim, sizes)
