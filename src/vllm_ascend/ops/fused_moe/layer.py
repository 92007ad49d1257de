"""One MoE layer's forward pass, composed from its parts.

    prepare -> select experts -> dispatch -> grouped expert MLP -> combine -> finalize
    (+ shared experts)

``prepare`` comes before selection because a method may gather other ranks' tokens
(allgather), which are then routed here. The comm method decides where tokens travel,
``experts_fn`` what happens to them; neither knows the other's internals.

One shortcut: with float experts on a single EP rank and no EPLB, nothing travels, and
dispatch -> grouped MLP -> combine is one backend fusion where the backend offers it
(``experts.local_swiglu_moe``; the reference backend's is one vLLM CPU kernel call).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from vllm_ascend.ops.fused_moe.comm.base import MoECommMethod
from vllm_ascend.ops.fused_moe.experts import ExpertsFn, local_swiglu_moe, unquantized_experts
from vllm_ascend.ops.fused_moe.select import select_experts


class ExpertLoadBalancing(Protocol):
    """EPLB's view of one layer (``vllm_ascend.eplb.runtime.LayerEplb``)."""

    def to_physical(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """``(M, K)`` logical expert ids -> physical slot ids."""

    def record(self, group_list: torch.Tensor) -> None:
        """Rows per local slot after dispatch, ``(S_l,)``."""


def moe_forward(
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor | None,
    w2: torch.Tensor | None,
    *,
    top_k: int,
    comm: MoECommMethod,
    scoring: str = "softmax",
    renormalize: bool = False,
    e_score_correction_bias: torch.Tensor | None = None,
    num_expert_group: int | None = None,
    topk_group: int | None = None,
    routed_scaling_factor: float = 1.0,
    experts_fn: ExpertsFn | None = None,
    dispatch_int8: bool = False,
    shared_experts_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eplb: ExpertLoadBalancing | None = None,
) -> torch.Tensor:
    """Mixture-of-experts output for this rank's tokens.

    hidden_states ``(N, H)``; router_logits ``(N, E)`` over all E (global) experts;
    w13 ``(L, H, 2I)`` and w2 ``(L, I, H)``: this rank's experts (``comm`` knows which),
    ignored when ``experts_fn`` is given (a quantised scheme's grouped MLP; with
    ``dispatch_int8`` it receives int8 rows and per-row scales). Selection arguments: see
    :func:`select_experts`. shared_experts_fn ``(N, H) -> (N, H)`` is added to the result.
    eplb (EPLB with redundant experts): maps each selected logical expert to one of its
    physical slots before dispatch, and records the tokens each local slot computed.
    Returns ``(N, H)``: ``sum_k w_k * expert_{id_k}(x)`` (+ shared experts).
    """
    float_experts = experts_fn is None
    if float_experts:
        if w13 is None or w2 is None:
            raise ValueError("pass w13 and w2, or an experts_fn")
        if w13.shape[0] != comm.num_local_experts:
            raise ValueError(f"w13 holds {w13.shape[0]} experts; {comm!r} computes "
                             f"{comm.num_local_experts} per rank")
        experts_fn = unquantized_experts(w13, w2)

    prepared = comm.prepare(hidden_states, router_logits)
    topk_weights, topk_ids = select_experts(
        prepared.router_logits,
        top_k,
        scoring=scoring,
        renormalize=renormalize,
        e_score_correction_bias=e_score_correction_bias,
        num_expert_group=num_expert_group,
        topk_group=topk_group,
        routed_scaling_factor=routed_scaling_factor,
    )
    combined = None
    if float_experts and eplb is None and comm.ep_size == 1:
        # Every expert is local and nothing travels: the backend may fuse dispatch, the
        # grouped MLP and combine (the reference backend: one vLLM CPU kernel call).
        combined = local_swiglu_moe(prepared.hidden_states, topk_weights, topk_ids, w13, w2)
    if combined is None:
        if eplb is not None:
            topk_ids = eplb.to_physical(topk_ids)  # logical expert -> one of its replicas
        dispatched = comm.dispatch(prepared.hidden_states, topk_weights, topk_ids,
                                   quantize=dispatch_int8)
        if eplb is not None:
            eplb.record(dispatched.group_list)  # tokens per local slot; no host sync
        expert_output = experts_fn(dispatched.hidden_states, dispatched.group_list,
                                   dispatched.dynamic_scale)
        combined = comm.combine(expert_output, dispatched.context)
    output = comm.finalize(combined, prepared.context).to(hidden_states.dtype)
    if shared_experts_fn is not None:
        output = output + shared_experts_fn(hidden_states)
    return output
