"""All2AllV: each rank sends every token copy straight to the rank owning its expert.

dispatch  sort this rank's ``N*K`` copies by expert (``npu_moe_token_permute``); swap the
          per-expert counts, then the rows (``all_to_all_v``); regroup what arrived
          (source-major) by local expert with a second, stable permute;
combine   invert the regrouping (``npu_moe_token_unpermute`` without weights), send the
          rows back, and reduce each token's K results with its routing weights
          (``npu_moe_token_unpermute`` with ``probs``).

Quantised dispatch converts the rows to int8 before the exchange (a quarter of the bytes
of fp32) and moves the per-row scales alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_ascend.device import ops
from vllm_ascend.distributed.all_to_all import all_to_all_v
from vllm_ascend.ops.fused_moe.comm.base import DispatchResult, MoECommMethod, check_routing
from vllm_ascend.ops.fused_moe.comm.registry import register_comm_method


@dataclass(frozen=True)
class All2AllVRouting:
    """For combine: both permutations and the row counts of the exchange."""

    sorted_indices: torch.Tensor  # (N*K,) int32: pair f -> row in the local expert sort
    regroup_indices: torch.Tensor  # (rows,) int32: received row -> row in expert order
    send_rows: list[int]  # rows sent to each rank
    recv_rows: list[int]  # rows received from each rank
    topk_weights: torch.Tensor  # (N, K)


@register_comm_method("all2allv")
class All2AllVCommMethod(MoECommMethod):
    def _exchange(self, rows: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        if self.ep_group is None:
            return rows
        return all_to_all_v(rows, send, self.ep_group, recv_counts=recv)[0]

    def dispatch(self, hidden_states, topk_weights, topk_ids, *, quantize=False):
        check_routing(hidden_states, topk_weights, topk_ids)
        w, local = self.ep_size, self.num_local_experts
        permuted, sorted_indices = ops.npu_moe_token_permute(hidden_states, topk_ids)

        # counts[e] copies for global expert e; the row of rank d is what d receives.
        counts = torch.bincount(topk_ids.reshape(-1).long(), minlength=self.num_experts)
        recv_matrix = self._exchange(counts, [local] * w, [local] * w).view(w, local)
        send_rows = counts.view(w, local).sum(1).tolist()
        recv_rows = recv_matrix.sum(1).tolist()

        scale = None
        if quantize:
            permuted, scale = ops.npu_dynamic_quant(permuted)
            scale = self._exchange(scale, send_rows, recv_rows)
        received = self._exchange(permuted, send_rows, recv_rows)

        # Arrived source-major (within a source: by expert); regroup by local expert.
        local_expert = torch.repeat_interleave(
            torch.arange(local, device=received.device).repeat(w), recv_matrix.reshape(-1))
        sorted_hidden, regroup_indices = ops.npu_moe_token_permute(received, local_expert)
        if scale is not None:
            scale = scale.new_empty(scale.shape).index_copy_(0, regroup_indices.long(), scale)
        return DispatchResult(
            hidden_states=sorted_hidden,
            group_list=recv_matrix.sum(0).to(torch.int64),
            dynamic_scale=scale,
            context=All2AllVRouting(sorted_indices, regroup_indices, send_rows, recv_rows,
                                    topk_weights),
        )

    def combine(self, expert_output: torch.Tensor, context: All2AllVRouting) -> torch.Tensor:
        received_order = ops.npu_moe_token_unpermute(expert_output, context.regroup_indices)
        returned = self._exchange(received_order, context.recv_rows, context.send_rows)
        return ops.npu_moe_token_unpermute(returned, context.sorted_indices,
                                           probs=context.topk_weights)
