"""vLLM's CPU communicator plus the variable-size collectives MoE data/expert parallelism needs."""

from __future__ import annotations

from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator

from vllm_ascend.distributed.variable_collectives import VariableCollectivesMixin


class AscendCPUCommunicator(VariableCollectivesMixin, CpuCommunicator):
    """``all_gatherv`` / ``reduce_scatterv`` over gloo; everything else is vLLM's."""
