"""vLLM's CPU communicator plus the variable-size collectives MoE data/expert parallelism needs."""

from __future__ import annotations

import torch
from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator

from vllm_ascend.distributed import variable_collectives as vc


class AscendCPUCommunicator(CpuCommunicator):
    def all_gatherv(
        self,
        input_: torch.Tensor | list[torch.Tensor],
        dim: int = 0,
        sizes: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        return vc.all_gatherv(input_, self.device_group, dim, sizes)

    def reduce_scatterv(
        self, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        return vc.reduce_scatterv(input_, self.device_group, dim, sizes)
