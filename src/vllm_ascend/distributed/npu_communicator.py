"""Device communicator of the NPU platform: torch.distributed over HCCL.

vLLM's :class:`DeviceCommunicatorBase` already runs every dense collective (all_reduce,
all_gather, reduce_scatter, gather, send/recv, broadcast) through ``torch.distributed`` on
``device_group``, which is an HCCL group on Ascend, so they are inherited unchanged.
Added here:

- ``all_gatherv`` / ``reduce_scatterv`` (per-rank sizes, MoE data/expert parallelism):
  :mod:`vllm_ascend.distributed.variable_collectives`, shared with the CPU platform;
- ``batch_isend_irecv`` (elastic EP weight moves): ``torch.distributed.batch_isend_irecv``;
- an all2all manager for expert parallelism: vLLM's backend-neutral all-gather /
  reduce-scatter manager (``naive`` / ``allgather_reducescatter``); Ascend's fused MC2
  dispatch/combine is a separate layer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)

from vllm_ascend.distributed.variable_collectives import VariableCollectivesMixin
from vllm_ascend.logger import logger

_ALL2ALL_BACKENDS = ("naive", "allgather_reducescatter")


class NPUCommunicator(VariableCollectivesMixin, DeviceCommunicatorBase):
    def __init__(
        self,
        cpu_group: ProcessGroup,
        device: torch.device | None = None,
        device_group: ProcessGroup | None = None,
        unique_name: str = "",
        use_all2all: bool = False,
    ) -> None:
        super().__init__(cpu_group, device, device_group, unique_name, use_all2all=use_all2all)
        if self.use_all2all:
            if self.all2all_backend not in _ALL2ALL_BACKENDS:
                logger.warning(
                    "all2all backend %r is not available on Ascend; using "
                    "allgather_reducescatter", self.all2all_backend)
            from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

            self.all2all_manager = AgRsAll2AllManager(self.cpu_group)

    def batch_isend_irecv(self, p2p_ops: list) -> None:
        """Run a list of ``torch.distributed.P2POp`` and wait for all of them."""
        if not p2p_ops:
            return
        for request in dist.batch_isend_irecv(p2p_ops):
            request.wait()

    def dispatch_router_logits(self, hidden_states, router_logits,
                               is_sequence_parallel: bool = False, extra_tensors=None):
        if self.all2all_manager is None:
            return super().dispatch_router_logits(
                hidden_states, router_logits, is_sequence_parallel, extra_tensors)
        return self.all2all_manager.dispatch_router_logits(
            hidden_states, router_logits, is_sequence_parallel, extra_tensors)

    def dispatch(self, hidden_states, topk_weights, topk_ids,
                 is_sequence_parallel: bool = False, extra_tensors=None):
        if self.all2all_manager is None:
            return super().dispatch(hidden_states, topk_weights, topk_ids,
                                    is_sequence_parallel, extra_tensors)
        return self.all2all_manager.dispatch(hidden_states, topk_weights, topk_ids,
                                             is_sequence_parallel, extra_tensors)

    def combine(self, hidden_states: torch.Tensor,
                is_sequence_parallel: bool = False) -> torch.Tensor:
        if self.all2all_manager is None:
            return super().combine(hidden_states, is_sequence_parallel)
        return self.all2all_manager.combine(hidden_states, is_sequence_parallel)

    def destroy(self) -> None:
        if self.all2all_manager is not None:
            self.all2all_manager.destroy()
            self.all2all_manager = None
