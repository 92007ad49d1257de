"""vLLM's MoE layer running the plugin's MoE path.

vLLM 0.32 builds an MoE layer with ``FusedMoEFactory``: a router, ``RoutedExperts``
(weights + quant method) and a ``MoERunner``. The plugin swaps, through ``register_oot``
(``vllm_ascend.ops.registry``):

- ``MoERunner`` -> :class:`AscendMoERunner`: its forward body is :func:`moe_forward`
  (prepare -> select experts -> dispatch -> grouped expert MLP -> combine -> finalize)
  with the communication method picked per step by :func:`select_comm_method` (the
  ``ascend.moe_comm_method`` entry of ``additional_config`` overrides it); shared experts
  and vLLM's final reductions / routed scaling stay vLLM's (``MoERunner.forward``);
- ``UnquantizedFusedMoEMethod`` -> :class:`AscendUnquantizedFusedMoEMethod`: float expert
  weights in the grouped matmul's ``(E, K, N)`` layout, ``apply_experts`` = the grouped MLP.

Quantised experts (the plugin's ``AscendFusedMoEMethod``) plug in through the same
``apply_experts(layer, x, group_list, dynamic_scale)``. vLLM's router object is kept (its
configuration is on ``RoutedExperts``) but selection is :func:`select_experts`. The runner
reaches vLLM's process groups only at the first forward, so a layer builds without them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.oracle.unquantized import UnquantizedMoeBackend
from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner
from vllm.model_executor.layers.fused_moe.runner.shared_experts import SharedExpertsOrder
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
    UnquantizedFusedMoEMethod,
)
from vllm.model_executor.utils import replace_parameter

from vllm_ascend.ops.fused_moe.comm import MoECommMethod, get_comm_method, select_comm_method
from vllm_ascend.ops.fused_moe.experts import grouped_mlp
from vllm_ascend.ops.fused_moe.layer import moe_forward
from vllm_ascend.ops.fused_moe.parallel import (
    MoEParallelLayout,
    max_tokens_per_rank,
    tp_chunk,
    tp_unchunk,
)

#: The ``additional_config['ascend']`` key naming a comm method for every MoE step.
COMM_OVERRIDE_KEY = "moe_comm_method"


def comm_override(additional_config: dict | None) -> str | None:
    """The comm-method override in ``additional_config['ascend']`` (None: choose per step);
    an unregistered name is a ValueError listing the registered ones."""
    section = (additional_config or {}).get("ascend") or {}
    name = section.get(COMM_OVERRIDE_KEY)
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError(f"additional_config['ascend']['{COMM_OVERRIDE_KEY}'] must be a "
                         f"string, got {type(name).__name__}")
    get_comm_method(name)  # ValueError: unknown MoE communication method ...; registered: ...
    return name


class AscendUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):
    """Float experts for :class:`AscendMoERunner`.

    Created like vLLM's (``w13_weight`` (E, 2I, H), ``w2_weight`` (E, H, I), vLLM's expert
    loader); after loading transposed once to ``w13_weight`` (E, H, 2I) and ``w2_weight``
    (E, I, H). vLLM's CPU / GPU kernel selection is skipped: the runner calls
    :meth:`apply_experts`.
    """

    def __init__(self, moe) -> None:
        FusedMoEMethodBase.__init__(self, moe)
        self.unquantized_backend = UnquantizedMoeBackend.OOT
        self.experts_cls = None
        self.supports_pre_processed_weights = False

    @property
    def is_monolithic(self) -> bool:
        return False

    @property
    def supports_eplb(self) -> bool:
        return False

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        for name in ("w13_weight", "w2_weight"):
            replace_parameter(layer, name, getattr(layer, name).data.transpose(1, 2).contiguous())

    def apply_experts(self, layer: torch.nn.Module, x: torch.Tensor, group_list: torch.Tensor,
                      dynamic_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``x (M, H)`` grouped by local expert, counts ``group_list (L,)`` -> ``(M, H)``."""
        if dynamic_scale is not None:
            raise ValueError("float experts got int8 rows; dispatch must not quantise for them")
        return grouped_mlp(x, group_list, layer.w13_weight, layer.w2_weight)

    def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
        raise NotImplementedError(
            "AscendUnquantizedFusedMoEMethod runs through AscendMoERunner (apply_experts); "
            "vLLM's modular-kernel apply() is not available")


def _unsupported(runner: MoERunner) -> list[str]:
    """What this layer asks for that the plugin's MoE path does not do."""
    experts, cfg = runner.routed_experts, runner.moe_config
    problems = []
    if cfg.moe_parallel_config.enable_eplb:
        problems.append("EPLB (enable_eplb)")
    if experts.custom_routing_function is not None:
        problems.append("a custom routing function")
    if type(runner.router).__name__ in ("ZeroExpertRouter", "RoutingSimulatorRouter"):
        problems.append(f"router {type(runner.router).__name__}")
    if experts.scoring_func not in ("softmax", "sigmoid"):
        problems.append(f"scoring_func={experts.scoring_func!r}")
    if cfg.activation != MoEActivation.SILU:
        problems.append(f"activation {cfg.activation.value!r} (only gated silu)")
    if cfg.has_bias:
        problems.append("expert biases")
    if experts.apply_router_weight_on_input:
        problems.append("apply_router_weight_on_input")
    if experts.expert_map_manager.num_fused_shared_experts:
        problems.append("fused shared experts")
    if not hasattr(experts.quant_method, "apply_experts"):
        problems.append(f"quant method {type(experts.quant_method).__name__} (no apply_experts)")
    return problems


class AscendMoERunner(MoERunner):
    """vLLM's MoE runner with the plugin's forward (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        problems = _unsupported(self)
        if problems:
            raise NotImplementedError(
                f"vllm-ascend MoE layer {self.layer_name}: unsupported: {'; '.join(problems)}")
        cfg = self.moe_config
        self.layout = MoEParallelLayout.from_vllm(cfg.moe_parallel_config,
                                                  cfg.is_sequence_parallel)
        experts = self.routed_experts
        local = list(experts.expert_map_manager.get_local_expert_ids()) \
            if self.layout.ep_size > 1 else list(range(cfg.num_experts))
        start = self.layout.ep_rank * experts.local_num_experts
        if local != list(range(start, start + experts.local_num_experts)):
            raise NotImplementedError(
                f"vllm-ascend MoE layer {self.layer_name}: experts must be placed contiguously "
                f"per EP rank (expert_placement_strategy='linear'); rank {self.layout.ep_rank} "
                f"holds {local}")
        self.comm_override = comm_override(get_current_vllm_config().additional_config)
        if self.comm_override == "mc2" and self.layout.ep_size == 1:
            raise ValueError(f"{COMM_OVERRIDE_KEY}='mc2' needs expert parallelism "
                             "(enable_expert_parallel with more than one rank)")
        self._comms: dict[tuple[str, int], MoECommMethod] = {}
        #: physical expert slots of the layer (E + redundant with EPLB) and the EPLB hook
        #: (routing map + load recorder; ``vllm_ascend.eplb.runtime.LayerEplb``)
        self.num_physical_experts = cfg.num_experts
        self.eplb = None

    def attach_eplb(self, hook, num_physical_experts: int) -> None:
        """EPLB took over this layer: route through ``hook`` onto ``num_physical_experts``
        slots (the runtime has grown the expert tensors to match)."""
        self.eplb = hook
        self.num_physical_experts = num_physical_experts
        self._comms.clear()

    def _select_forward(self):
        # The opaque custom op on every platform: Dynamo must not trace the routing ops
        # (data-dependent shapes, host syncs) nor the collectives of the comm methods.
        if self._shared_experts is None:
            return torch.ops.vllm.moe_forward
        return torch.ops.vllm.moe_forward_shared

    # -- one step ------------------------------------------------------------------------

    @functools.cached_property
    def _ep_group(self):
        """vLLM's EP group coordinator (None without EP); its ranks match the layout's."""
        if self.layout.ep_size == 1:
            return None
        import torch.distributed as dist
        from vllm.distributed import get_ep_group

        group = get_ep_group()
        if group.world_size != self.layout.ep_size or \
                dist.get_rank(group.device_group) != self.layout.ep_rank:
            raise RuntimeError(
                f"vLLM's EP group (rank {dist.get_rank(group.device_group)} of "
                f"{group.world_size}) disagrees with the MoE layout {self.layout}")
        return group

    def _step_max_tokens(self, num_tokens: int) -> int:
        tokens_across_dp = None
        if self.layout.dp_size > 1:
            from vllm.forward_context import get_forward_context, is_forward_context_available

            if is_forward_context_available():
                meta = get_forward_context().dp_metadata
                tokens_across_dp = None if meta is None else meta.num_tokens_across_dp_cpu
        group = self._ep_group
        return max_tokens_per_rank(self.layout, num_tokens, tokens_across_dp,
                                   None if group is None else group.cpu_group)

    def comm_for_step(self, num_tokens: int) -> MoECommMethod:
        """The comm method for a step where this rank holds ``num_tokens`` tokens."""
        busiest = self._step_max_tokens(num_tokens)
        name = select_comm_method(self.layout.ep_size, busiest, override=self.comm_override)
        # MC2 sizes its buffers by the busiest rank when DP ranks' batches differ.
        key = (name, busiest if name == "mc2" and self.layout.dp_size > 1 else 0)
        comm = self._comms.get(key)
        if comm is None:
            group = None if self._ep_group is None else self._ep_group.device_group
            kwargs = {"max_tokens_per_rank": key[1]} if name == "mc2" else {}
            comm = get_comm_method(name)(group, self.num_physical_experts, **kwargs)
            self._comms[key] = comm
        return comm

    def routed_forward(self, hidden_states: torch.Tensor,
                       router_logits: torch.Tensor) -> torch.Tensor:
        """The routed experts' output ``(N, H)`` for this rank's tokens (before vLLM's final
        reduction; with TP-chunked EP only this rank's chunk rows are non-zero)."""
        experts, lay = self.routed_experts, self.layout
        n = hidden_states.shape[0]
        x = tp_chunk(hidden_states, lay.tp_chunks, lay.tp_rank)
        logits = tp_chunk(router_logits, lay.tp_chunks, lay.tp_rank)
        grouped = experts.use_grouped_topk and (experts.num_expert_group or 1) > 1
        method = experts.quant_method
        if isinstance(method, AscendUnquantizedFusedMoEMethod):
            # float experts by weight: moe_forward may then fuse dispatch, MLP and combine
            w13, w2, experts_fn = experts.w13_weight, experts.w2_weight, None
        else:
            w13 = w2 = None
            experts_fn = functools.partial(method.apply_experts, experts)
        out = moe_forward(
            x, logits, w13, w2,
            top_k=experts.top_k,
            comm=self.comm_for_step(n),
            scoring=experts.scoring_func,
            renormalize=experts.renormalize,
            e_score_correction_bias=experts.e_score_correction_bias,
            num_expert_group=experts.num_expert_group if grouped else None,
            topk_group=experts.topk_group if grouped else None,
            routed_scaling_factor=experts.routed_scaling_factor,
            experts_fn=experts_fn,
            eplb=self.eplb,
        )
        return tp_unchunk(out, n, lay.tp_chunks, lay.tp_rank)

    def _forward_impl(self, hidden_states, router_logits, shared_experts_input,
                      input_ids=None):
        if self.gate is not None:
            router_logits, _ = self.gate(hidden_states)
        shared_output = None
        if self._shared_experts is not None:
            self._maybe_apply_shared_experts(shared_experts_input, SharedExpertsOrder.NO_OVERLAP)
            shared_output = self._shared_experts.output
        routed = self.routed_forward(hidden_states, router_logits)
        return routed if self._shared_experts is None else (shared_output, routed)
