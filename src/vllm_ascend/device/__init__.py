"""Device facade: Ascend operators and the device API, on torch_npu or the reference backend."""

from vllm_ascend.device.facade import (
    backend_name,
    device,
    fusion,
    mark_volatile_weights,
    npu_available,
    ops,
)

__all__ = ["backend_name", "device", "fusion", "mark_volatile_weights", "npu_available", "ops"]
