"""The contract of an MoE communication method (prepare -> dispatch -> combine -> finalize).

Shapes: ``N`` tokens on this rank, ``M`` tokens the method works on after prepare (N, or
all EP ranks' tokens for allgather), ``H`` hidden size, ``K`` experts per token, ``E``
experts in total, ``W`` EP ranks, ``L = E / W`` local experts.

Expert placement: experts are split contiguously, rank r owns ``[r*L, (r+1)*L)``.
``topk_ids`` are these (physical) expert ids; a logical -> physical map (EPLB) is applied
before dispatch, so no ``expert_map`` is needed here.

A method keeps only its configuration (group, sizes) on ``self``; everything a later
step needs is in the context object the earlier step returns, so one instance serves
any number of interleaved forward passes (and the object is safe to share).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class PrepareResult:
    """hidden_states ``(M, H)`` and router_logits ``(M, E)`` to route; context for finalize."""

    hidden_states: torch.Tensor
    router_logits: torch.Tensor
    context: Any = None


@dataclass(frozen=True)
class DispatchResult:
    """What the grouped expert MLP consumes.

    hidden_states ``(rows, H)``: token copies grouped by local expert (int8 when dispatch
    quantised); group_list ``(L,)`` int64: rows per local expert (rows past their sum are
    padding); dynamic_scale ``(rows,)`` fp32 per-row int8 scale, or None; context: for
    :meth:`MoECommMethod.combine`.
    """

    hidden_states: torch.Tensor
    group_list: torch.Tensor
    dynamic_scale: torch.Tensor | None
    context: Any


def check_routing(hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> None:
    """hidden_states ``(M, H)``, topk_weights and topk_ids ``(M, K)`` (shapes only: reading
    id values would synchronise the device; the routing ops check them)."""
    if hidden_states.dim() != 2:
        raise ValueError(f"hidden_states must be (M, H), got {tuple(hidden_states.shape)}")
    m = hidden_states.shape[0]
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        if t.dim() != 2 or t.shape[0] != m:
            raise ValueError(f"{name} must be (M={m}, K), got {tuple(t.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights {tuple(topk_weights.shape)} and topk_ids "
                         f"{tuple(topk_ids.shape)} must have the same shape")


class MoECommMethod(ABC):
    """Moves token copies to the ranks owning their experts and the results back.

    ep_group: the expert-parallel process group; None means a single rank (no EP).
    num_experts: E, the global (physical) expert count, a multiple of the group size.
    """

    name: ClassVar[str] = ""  # set by @register_comm_method

    def __init__(self, ep_group: dist.ProcessGroup | None, num_experts: int) -> None:
        self.ep_group = ep_group
        self.ep_size = 1 if ep_group is None else dist.get_world_size(ep_group)
        self.ep_rank = 0 if ep_group is None else dist.get_rank(ep_group)
        if num_experts < 1 or num_experts % self.ep_size:
            raise ValueError(f"num_experts={num_experts} must be a positive multiple of the "
                             f"EP size {self.ep_size}")
        self.num_experts = num_experts
        self.num_local_experts = num_experts // self.ep_size

    @property
    def local_expert_range(self) -> tuple[int, int]:
        """``[start, end)`` of the experts this rank computes."""
        start = self.ep_rank * self.num_local_experts
        return start, start + self.num_local_experts

    def prepare(self, hidden_states: torch.Tensor, router_logits: torch.Tensor) -> PrepareResult:
        """Bring the tokens this rank routes into place (default: its own, unchanged)."""
        return PrepareResult(hidden_states, router_logits)

    @abstractmethod
    def dispatch(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor, *, quantize: bool = False) -> DispatchResult:
        """Send each of the ``M*K`` token copies to its expert's rank; group them by local
        expert. ``quantize``: per-row dynamic int8 (for experts that take int8 input)."""

    @abstractmethod
    def combine(self, expert_output: torch.Tensor, context: Any) -> torch.Tensor:
        """expert_output ``(rows, H)`` in dispatch's row order -> ``(M, H)``:
        ``out[t] = sum_k topk_weights[t, k] * expert_output[row of (t, k)]``."""

    def finalize(self, hidden_states: torch.Tensor, context: Any) -> torch.Tensor:
        """Undo prepare: ``(M, H)`` -> this rank's ``(N, H)`` (default: unchanged)."""
        return hidden_states

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, ep={self.ep_rank}/{self.ep_size}, "
                f"experts={self.num_experts})")
