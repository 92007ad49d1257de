"""W4A16 linear: int4 weights (one value per int8 byte on disk) dequantised in the matmul.

Same tensors and math as :mod:`.w8a16` (``weight`` (N, K) int8, ``weight_scale`` /
``weight_offset`` per-channel or per-group of the description's ``group_size``), except that
every weight value must lie in the int4 range [-8, 7]. At load the weight is packed eight
values per int32 along N for the device (``ops.npu_convert_weight_to_int4pack``), so N must
be a multiple of 8.

The compressed-tensors W4A16 path (``pack-quantized`` int4) converts its ``weight_packed``
to these int8 values first (see ``quantization/compressed_tensors_config.py``).

After :meth:`process_weights_after_loading`: ``weight`` int32 (K, N/8); scales as in W8A16.
"""

from __future__ import annotations

import torch

from vllm_ascend.quantization.methods._int4 import kernel_int4
from vllm_ascend.quantization.methods.registry import register_scheme
from vllm_ascend.quantization.methods.w8a16 import W8A16Linear


@register_scheme("W4A16", "linear")
class W4A16Linear(W8A16Linear):
    """Weight-only int4, per-channel or per-group scales."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        n = sum(output_partition_sizes)
        if n % 8:
            raise self.tensor_error("weight", f"has {n} output channels on this rank; int4 "
                                    "packing needs a multiple of 8")
        super().create_weights(layer, input_size_per_partition, output_partition_sizes,
                               input_size, output_size, params_dtype, weight_loader,
                               **extra_weight_attrs)

    def _device_weight(self, weight_nk: torch.Tensor) -> torch.Tensor:
        """int4 values (N, K) in int8 -> packed int32 (K, N/8)."""
        out = (weight_nk < -8) | (weight_nk > 7)
        if bool(out.any()):
            row, col = (int(i) for i in out.nonzero()[0])
            shard = self._shard_of_channel(row)
            raise self.tensor_error(
                "weight", f"holds {int(weight_nk[row, col])} at output channel "
                f"{row - self._offset_of(shard)}, input {col}; int4 weights must lie in "
                "[-8, 7]", shard)
        return kernel_int4(weight_nk.t())
