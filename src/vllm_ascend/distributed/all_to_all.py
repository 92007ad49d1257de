"""``all_to_all_v``: an all-to-all with per-destination row counts, on gloo (CPU) and hccl.

Rank ``s`` sends rows ``input[sum(send_counts[:d]) : sum(send_counts[:d + 1])]`` to rank
``d``; every rank receives its pieces concatenated in source-rank order.

Backend check (torch 2.13, gloo): ``dist.all_to_all_single`` with uneven split sizes works
for every dtype we move (int8/32/64, fp16/bf16/fp32/fp64) and for zero-row pieces;
the list form ``dist.all_to_all`` does *not* (gloo requires equal piece sizes). hccl
supports both. So this helper uses ``all_to_all_single`` only: one small exchange of the
counts (skipped when the caller already knows them), then one exchange of the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def _as_counts(counts: Sequence[int] | torch.Tensor, world: int, arg: str) -> list[int]:
    values = counts.tolist() if isinstance(counts, torch.Tensor) else [int(c) for c in counts]
    if len(values) != world or any(c < 0 for c in values):
        raise ValueError(
            f"all_to_all_v: {arg} must list {world} non-negative row counts (one per rank), "
            f"got {values}"
        )
    return values


def exchange_counts(send_counts: Sequence[int] | torch.Tensor, group: dist.ProcessGroup,
                    device: torch.device | str = "cpu") -> list[int]:
    """Tell every rank how many rows it will receive: ``recv[s]`` = rank s's ``send[me]``."""
    world = dist.get_world_size(group)
    send = _as_counts(send_counts, world, "send_counts")
    if world == 1:
        return send
    send_t = torch.tensor(send, dtype=torch.int64, device=device)
    recv_t = torch.empty_like(send_t)
    dist.all_to_all_single(recv_t, send_t, group=group)
    return recv_t.tolist()


def all_to_all_v(
    input: torch.Tensor,
    send_counts: Sequence[int] | torch.Tensor,
    group: dist.ProcessGroup,
    recv_counts: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Exchange rows of ``input (R, ...)`` between the ranks of ``group``.

    send_counts ``(W,)``: rows for each destination, in order, summing to R.
    recv_counts ``(W,)`` or None: rows expected from each source; None exchanges them
    first (pass them when known, e.g. on the way back, to save a collective).
    Returns ``(output (sum(recv_counts), ...), recv_counts as a list)``.
    """
    world = dist.get_world_size(group)
    send = _as_counts(send_counts, world, "send_counts")
    if sum(send) != input.shape[0]:
        raise ValueError(
            f"all_to_all_v: send_counts {send} sum to {sum(send)}, input has "
            f"{input.shape[0]} rows"
        )
    if recv_counts is None:
        recv = exchange_counts(send, group, input.device)
    else:
        recv = _as_counts(recv_counts, world, "recv_counts")
    if world == 1:
        return input, recv
    output = input.new_empty((sum(recv),) + tuple(input.shape[1:]))
    dist.all_to_all_single(output, input.contiguous(), recv, send, group=group)
    return output, recv
