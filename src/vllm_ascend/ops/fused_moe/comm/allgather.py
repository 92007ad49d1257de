"""AllGather: every EP rank routes all EP ranks' tokens, through its own experts only.

prepare   gather hidden states and router logits of all ranks (``all_gatherv``);
dispatch  ``npu_moe_init_routing_v2`` keeps the copies whose expert is local
          (``active_expert_range``) and groups them by expert;
combine   ``npu_moe_finalize_routing``: each token's weighted sum over its *local*
          experts (a partial sum; other ranks hold the rest);
finalize  ``reduce_scatterv``: sum the partial sums over ranks and return each rank its
          own tokens.

With one rank every collective is skipped: this is the plain single-device MoE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_ascend.device import ops
from vllm_ascend.distributed.variable_collectives import all_gatherv, reduce_scatterv
from vllm_ascend.ops.fused_moe.comm.base import (
    DispatchResult,
    MoECommMethod,
    PrepareResult,
    check_routing,
)
from vllm_ascend.ops.fused_moe.comm.registry import register_comm_method


@dataclass(frozen=True)
class GatheredTokens:
    """Tokens per EP rank, in rank order (None: a single rank, nothing gathered)."""

    sizes: list[int] | None


@dataclass(frozen=True)
class AllGatherRouting:
    """For combine: where each pair ``f = t*K + j`` landed (-1: not a local expert)."""

    expanded_row_idx: torch.Tensor  # (M*K,) int32
    topk_weights: torch.Tensor  # (M, K)
    topk_ids: torch.Tensor  # (M, K)


@register_comm_method("allgather")
class AllGatherCommMethod(MoECommMethod):
    def prepare(self, hidden_states: torch.Tensor, router_logits: torch.Tensor) -> PrepareResult:
        if self.ep_size == 1:
            return PrepareResult(hidden_states, router_logits, GatheredTokens(None))
        count = torch.tensor([hidden_states.shape[0]], device=hidden_states.device)
        sizes = all_gatherv(count, self.ep_group).tolist()
        hidden_states, router_logits = all_gatherv(
            [hidden_states, router_logits], self.ep_group, 0, sizes)
        return PrepareResult(hidden_states, router_logits, GatheredTokens(sizes))

    def dispatch(self, hidden_states, topk_weights, topk_ids, *, quantize=False):
        check_routing(hidden_states, topk_weights, topk_ids)
        sorted_hidden, expanded_row_idx, group_list, scale = ops.npu_moe_init_routing_v2(
            hidden_states,
            topk_ids,
            expert_num=self.num_experts,
            expert_tokens_num_type=1,  # counts per expert
            expert_tokens_num_flag=True,
            quant_mode=1 if quantize else -1,
            active_expert_range=list(self.local_expert_range),
        )
        return DispatchResult(
            hidden_states=sorted_hidden,
            group_list=group_list.to(torch.int64),
            dynamic_scale=scale if quantize else None,
            context=AllGatherRouting(expanded_row_idx, topk_weights, topk_ids),
        )

    def combine(self, expert_output: torch.Tensor, context: AllGatherRouting) -> torch.Tensor:
        return ops.npu_moe_finalize_routing(
            expert_output,
            None,  # skip1
            None,  # skip2
            None,  # bias
            context.topk_weights,
            context.expanded_row_idx,
            context.topk_ids,
            drop_pad_mode=2,  # row-major src_to_dst: the init_routing_v2 layout
        )

    def finalize(self, hidden_states: torch.Tensor, context: GatheredTokens) -> torch.Tensor:
        if context.sizes is None:
            return hidden_states
        return reduce_scatterv(hidden_states, self.ep_group, 0, context.sizes)
