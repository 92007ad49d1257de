"""Fused MoE: expert selection -> communication method -> grouped expert MLP.

:func:`moe_forward` composes the parts; communication methods are looked up by name
(:func:`get_comm_method`, chosen per step by :func:`select_comm_method`).
"""

from vllm_ascend.ops.fused_moe.comm import (
    MoECommMethod,
    get_comm_method,
    register_comm_method,
    select_comm_method,
)
from vllm_ascend.ops.fused_moe.experts import ExpertsFn, grouped_mlp, unquantized_experts
from vllm_ascend.ops.fused_moe.layer import moe_forward
from vllm_ascend.ops.fused_moe.select import select_experts

__all__ = [
    "ExpertsFn",
    "MoECommMethod",
    "get_comm_method",
    "grouped_mlp",
    "moe_forward",
    "register_comm_method",
    "select_comm_method",
    "select_experts",
    "unquantized_experts",
]
