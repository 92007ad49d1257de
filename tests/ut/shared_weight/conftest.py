"""The one-rank vLLM process group of the quantization tests (layers need a TP group)."""

from tests.ut.quantization.conftest import vllm_ctx, vllm_dist  # noqa: F401
