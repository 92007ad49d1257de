"""MC2: the fused expert-parallel dispatch / combine kernels (``npu_moe_distribute_*``).

One kernel sends each token to the ranks owning its K experts and groups the arrivals by
local expert (optionally quantising to int8 on the way, ``quant_mode=2``); another
returns the expert outputs and reduces them with the routing weights. Lowest latency for
small decode batches; the kernel caps the tokens per rank (see ``select_comm_method``).

The kernels name their communicator: on the NPU the HCCL communicator name of the EP
group, on the reference backend a name registered for the torch.distributed group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from vllm_ascend.device import backend_name, ops
from vllm_ascend.ops.fused_moe.comm.base import DispatchResult, MoECommMethod, check_routing
from vllm_ascend.ops.fused_moe.comm.registry import register_comm_method


def communicator_name(group: dist.ProcessGroup) -> str:
    """The ``group_ep`` string naming ``group`` to the MC2 kernels."""
    if backend_name() == "torch_npu":
        rank = dist.get_rank(group)
        return group._get_backend(torch.device("npu")).get_hccl_comm_name(rank)
    from vllm_ascend.device.reference import mc2

    ranks = "-".join(map(str, dist.get_process_group_ranks(group)))
    name = f"reference-ep-{ranks}-{id(group):x}"
    mc2.register_group(name, group)
    return name


@dataclass(frozen=True)
class MC2Routing:
    """Dispatch's bookkeeping, handed back to the combine kernel."""

    topk_ids: torch.Tensor  # (N, K) int32
    topk_weights: torch.Tensor  # (N, K) fp32
    expand_idx: torch.Tensor
    ep_recv_counts: torch.Tensor
    tp_recv_counts: torch.Tensor
    expand_scales: torch.Tensor


@register_comm_method("mc2")
class MC2CommMethod(MoECommMethod):
    """group_name: the communicator name (None: derived from ep_group).
    max_tokens_per_rank: the largest N of any rank when they differ (0: all equal)."""

    def __init__(self, ep_group: dist.ProcessGroup | None, num_experts: int, *,
                 group_name: str | None = None, max_tokens_per_rank: int = 0) -> None:
        if ep_group is None:
            raise ValueError("mc2 needs an expert-parallel process group (ep_group=None given)")
        super().__init__(ep_group, num_experts)
        self.group_name = group_name or communicator_name(ep_group)
        self.global_bs = max_tokens_per_rank * self.ep_size

    def _ep_args(self) -> tuple:
        return self.group_name, self.ep_size, self.ep_rank, self.num_experts

    def dispatch(self, hidden_states, topk_weights, topk_ids, *, quantize=False):
        check_routing(hidden_states, topk_weights, topk_ids)
        topk_ids = topk_ids.to(torch.int32)
        topk_weights = topk_weights.to(torch.float32)
        (expand_x, dynamic_scales, expand_idx, expert_token_nums, ep_recv_counts,
         tp_recv_counts, expand_scales) = ops.npu_moe_distribute_dispatch(
            hidden_states,
            topk_ids,
            *self._ep_args(),
            expert_scales=topk_weights,
            quant_mode=2 if quantize else 0,
            global_bs=self.global_bs,
            expert_token_nums_type=1,  # counts per local expert
        )
        return DispatchResult(
            hidden_states=expand_x,
            group_list=expert_token_nums.to(torch.int64),
            dynamic_scale=dynamic_scales if quantize else None,
            context=MC2Routing(topk_ids, topk_weights, expand_idx, ep_recv_counts,
                               tp_recv_counts, expand_scales),
        )

    def combine(self, expert_output: torch.Tensor, context: MC2Routing) -> torch.Tensor:
        return ops.npu_moe_distribute_combine(
            expert_output,
            context.topk_ids,
            context.expand_idx,
            context.ep_recv_counts,
            context.topk_weights,
            *self._ep_args(),
            tp_send_counts=context.tp_recv_counts,
            expand_scales=context.expand_scales,
            global_bs=self.global_bs,
        )
