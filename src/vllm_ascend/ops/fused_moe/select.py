"""Expert selection: router logits ``(N, E)`` -> top-k weights and expert ids.

Scores are ``softmax(logits)`` or ``sigmoid(logits)``. The experts are the top k of
``scores + e_score_correction_bias``, optionally only within the best ``topk_group`` of
``num_expert_group`` groups (a group scores by the sum of its top 2 biased scores when
a bias is given, else by its max, as in vLLM's ``grouped_topk``). The weights are the
*unbiased* scores of the chosen experts, renormalised to sum 1 if asked, then times
``routed_scaling_factor``. DeepSeek-V3 ("noaux_tc"): sigmoid, bias, 8 groups, top 4
groups, k = 8, renormalise, factor 2.5.

Plain softmax top-k goes to ``npu_moe_gating_top_k_softmax`` (which never
renormalises); everything else to ``npu_moe_gating_top_k``, which renormalises exactly
when the scores are sigmoid. When that does not match ``renormalize`` the weights are
recomputed from the scores the op returns. Logits are upcast to fp32 first so the
weights come out fp32.
"""

from __future__ import annotations

import torch

from vllm_ascend.device import ops

SCORINGS = ("softmax", "sigmoid")


def _renormalize(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(dim=-1, keepdim=True)


def select_experts(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = False,
    e_score_correction_bias: torch.Tensor | None = None,
    num_expert_group: int | None = None,
    topk_group: int | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits ``(N, E)`` -> (topk_weights ``(N, k)`` fp32, topk_ids ``(N, k)`` int32),
    ids in descending order of (biased) score."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring={scoring!r}; accepted: {', '.join(map(repr, SCORINGS))}")
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be (N, E), got {tuple(router_logits.shape)}")
    if (num_expert_group is None) != (topk_group is None):
        raise ValueError(f"num_expert_group={num_expert_group} and topk_group={topk_group} "
                         "must be given together (grouped top-k) or both None")
    logits = router_logits.float()
    grouped = num_expert_group is not None and num_expert_group > 1

    if scoring == "softmax" and e_score_correction_bias is None and not grouped:
        weights, ids, _ = ops.npu_moe_gating_top_k_softmax(logits, k=top_k)
        if renormalize:
            weights = _renormalize(weights)
        return weights * routed_scaling_factor, ids

    sigmoid = scoring == "sigmoid"
    op_weights, ids, scores = ops.npu_moe_gating_top_k(
        logits,
        top_k,
        bias=None if e_score_correction_bias is None else e_score_correction_bias.float(),
        k_group=topk_group if grouped else 1,
        group_count=num_expert_group if grouped else 1,
        group_select_mode=1 if e_score_correction_bias is not None else 0,
        norm_type=1 if sigmoid else 0,  # 1 = sigmoid, and the op renormalises
        out_flag=True,  # also return the scores
        routed_scaling_factor=routed_scaling_factor,
    )
    if renormalize == sigmoid:  # the op already did what was asked
        return op_weights, ids
    weights = scores.gather(1, ids.long())
    if renormalize:
        weights = _renormalize(weights)
    return weights * routed_scaling_factor, ids
