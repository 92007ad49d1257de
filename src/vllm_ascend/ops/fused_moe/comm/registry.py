"""Communication methods by name, and the rule that picks one per forward pass.

A method is a :class:`~vllm_ascend.ops.fused_moe.comm.base.MoECommMethod` subclass
registered with ``@register_comm_method("name")``; :func:`get_comm_method` looks it up.
"""

from __future__ import annotations

from vllm_ascend.registry import Registry

#: The MC2 kernel's per-rank batch limit on A2 (torch_npu_ops.md, "MC2": BS <= 256).
MC2_MAX_TOKENS_PER_RANK = 256


def _set_name(name: str, cls: type) -> None:
    cls.name = name


COMM_METHODS: Registry[type] = Registry("MoE communication method", on_register=_set_name)
register_comm_method = COMM_METHODS.register
get_comm_method = COMM_METHODS.get
comm_method_names = COMM_METHODS.names


def select_comm_method(
    ep_size: int,
    num_tokens: int,
    max_tokens_per_rank_capacity: int = MC2_MAX_TOKENS_PER_RANK,
    override: str | None = None,
) -> str:
    """The communication method for one forward pass.

    1. ``override`` (a registered name) wins;
    2. ``ep_size == 1``: "allgather" (no peer: the gather and reduce-scatter are no-ops);
    3. ``num_tokens <= max_tokens_per_rank_capacity``: "mc2" (small decode batches fit the
       fused dispatch/combine kernel, whose latency is lowest);
    4. otherwise "all2allv" (prefill and large batches).

    Every EP rank must choose the same method (they run matching collectives), so pass
    the same ``num_tokens`` everywhere: the largest per-rank token count of the step.
    """
    if override is not None:
        get_comm_method(override)  # ValueError listing the registered names
        return override
    if ep_size < 1:
        raise ValueError(f"ep_size={ep_size} must be >= 1")
    if num_tokens < 0:
        raise ValueError(f"num_tokens={num_tokens} must be >= 0")
    if max_tokens_per_rank_capacity < 0:
        raise ValueError(
            f"max_tokens_per_rank_capacity={max_tokens_per_rank_capacity} must be >= 0"
        )
    if ep_size == 1:
        return "allgather"
    if num_tokens <= max_tokens_per_rank_capacity:
        return "mc2"
    return "all2allv"
