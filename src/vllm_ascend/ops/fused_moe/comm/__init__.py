"""MoE communication methods, registered by name: "allgather", "all2allv", "mc2"."""

from vllm_ascend.ops.fused_moe.comm.base import DispatchResult, MoECommMethod, PrepareResult
from vllm_ascend.ops.fused_moe.comm.registry import (
    MC2_MAX_TOKENS_PER_RANK,
    comm_method_names,
    get_comm_method,
    register_comm_method,
    select_comm_method,
)

# Importing the built-in methods registers them.
from vllm_ascend.ops.fused_moe.comm import all2allv, allgather, mc2  # noqa: E402,F401  isort: skip

__all__ = [
    "MC2_MAX_TOKENS_PER_RANK",
    "DispatchResult",
    "MoECommMethod",
    "PrepareResult",
    "comm_method_names",
    "get_comm_method",
    "register_comm_method",
    "select_comm_method",
]
