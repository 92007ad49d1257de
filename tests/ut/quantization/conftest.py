"""Fixtures for the quantization tests: a one-rank vLLM process group and registered configs.

vLLM's parameter classes and linear layers ask the tensor-parallel group for their rank, so
the tests that build layers run inside a world of size 1 (gloo), set up once per session.
"""

from __future__ import annotations


import pytest

from bench.procs import free_port


@pytest.fixture(scope="session")
def vllm_dist():
    """World size 1, TP 1; torn down at the end of the session if this fixture built it."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as ps

    from vllm_ascend.quantization import register

    register()
    built = not ps.model_parallel_is_initialized()
    config = VllmConfig()
    if built:
        with set_current_vllm_config(config):
            ps.init_distributed_environment(
                world_size=1, rank=0, local_rank=0, backend="gloo",
                distributed_init_method=f"tcp://127.0.0.1:{free_port()}")
            ps.initialize_model_parallel(1, 1)
    yield config
    if built:
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()


@pytest.fixture
def vllm_ctx(vllm_dist):
    """A default vLLM config context (layers read it while being built)."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(vllm_dist):
        yield
