"""compressed-tensors checkpoint tensors converted, at load, into what the schemes expect.

Each adapter subclasses the plugin's scheme for the mapped quant type, declares the tensors
llm-compressor writes (names, shapes, dtypes below; ``N`` outputs, ``K`` inputs, ``S``
shards of a fused layer), and in ``process_weights_after_loading`` rewrites them into the
ModelSlim-named tensors the scheme validates and runs on:

=====================  =========================================  ==========================
scheme                 compressed-tensors tensors                 converted to
=====================  =========================================  ==========================
W8A8_DYNAMIC           weight (N, K) int8; weight_scale (N, 1)    weight_offset = 0 added;
                       (channel) or (1,) per shard (tensor)       tensor scales -> (N, 1)
W8A8 (static)          as above + input_scale (1,) per shard,     deq_scale = s_x * s_w,
                       input_zero_point (1,) int8 if asymmetric   quant_bias = round(b / d)
                                                                  - zp * sum_k w (b = the
                                                                  layer's float bias)
W8A16 / W4A16          weight_packed (N, K*bits/32) int32,        weight (N, K) int8 values
                       weight_scale (N, K/G) or (N, 1),           (unpacked with the
                       weight_shape (2,); or weight (N, K) int8   library's unpack_from_int32),
                       for 8-bit int-quantized                    weight_offset = 0
W4A8_DYNAMIC           weight_packed (N, K/8) int32,              weight (N, K) int8 values
                       weight_scale (N, K/G) group or (N, 1)      (legacy layout); group:
                       channel, weight_shape (2,)                 weight_scale = 1,
                                                                  weight_scale_second = ct
                                                                  scale; channel:
                                                                  weight_scale = ct scale;
                                                                  all offsets = 0
=====================  =========================================  ==========================

compressed-tensors stores symmetric weights without ``weight_zero_point``; asymmetric
weights are rejected when the config is read. Packed int4/int8 words hold ``value + 2**(b-1)``
per field, lowest field first; ``unpack_from_int32`` returns the signed values.

W4A8_DYNAMIC is exact: llm-compressor's one-level scale ``W[n, k] = w[n, k] * s[n, k // G]``
becomes ModelSlim's two levels with the per-channel level 1 (``s_c * s_g = 1 * s = s`` in
fp32, bit for bit), so the scheme's processed ``weight_scale`` (K/G, N) is the checkpoint's
scale transposed (fp32), and the int4 values are not re-rounded. The scheme quantises
activations per token to int8, as the config's token-dynamic activations say (see
:mod:`~vllm_ascend.quantization.methods.w4a8_dynamic`).
"""

from __future__ import annotations

from typing import Any

import torch
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from compressed_tensors.quantization import QuantizationScheme, QuantizationStrategy
from vllm.model_executor.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    ModelWeightParameter,
    PackedvLLMParameter,
    PerTensorScaleParameter,
)

from vllm_ascend.quantization.methods import _tensor_checks as chk
from vllm_ascend.quantization.methods._linear_common import (
    FLOATS,
    QuantLinearBase,
    replace_param,
)
from vllm_ascend.quantization.methods.w4a8_dynamic import W4A8DynamicLinear, check_group
from vllm_ascend.quantization.methods.w4a16 import W4A16Linear
from vllm_ascend.quantization.methods.w8a8 import W8A8StaticLinear
from vllm_ascend.quantization.methods.w8a8_dynamic import W8A8DynamicLinear
from vllm_ascend.quantization.methods.w8a16 import W8A16Linear

PACKED_FORMAT = "pack-quantized"


class _CTInt8Weights:
    """int8 weight + channel or per-tensor weight scale, as llm-compressor writes them."""

    args: QuantizationScheme

    def __init__(self, quant_description: dict[str, Any], prefix: str,
                 args: QuantizationScheme | None = None, fmt: str | None = None) -> None:
        super().__init__(quant_description, prefix)  # type: ignore[call-arg]
        self.args = args
        self.fmt = fmt

    def _declare_int8(self, layer, k, widths, params_dtype, weight_loader) -> None:
        self._begin(layer, k, widths, params_dtype)
        self._register(layer, "weight", ModelWeightParameter,
                       torch.empty(self.n, k, dtype=torch.int8), weight_loader, (torch.int8,),
                       input_dim=1, output_dim=0)
        if self.args.weights.strategy == QuantizationStrategy.TENSOR:
            self._register(layer, "weight_scale", PerTensorScaleParameter,
                           torch.empty(len(widths), dtype=torch.float32), weight_loader, FLOATS)
        else:
            self._register(layer, "weight_scale", ChannelQuantScaleParameter,
                           torch.empty(self.n, 1, dtype=torch.float32), weight_loader, FLOATS,
                           output_dim=0)

    def _per_shard(self, values: torch.Tensor) -> torch.Tensor:
        """(S,) per-shard values -> (N,) per output channel."""
        return torch.repeat_interleave(values.float(), torch.tensor(self.widths))

    def _channel_weight_scale(self, layer) -> torch.Tensor:
        """weight_scale as (N, 1) fp32 whatever the strategy; also installed on the layer."""
        scale = layer.weight_scale.data.float()
        if self.args.weights.strategy == QuantizationStrategy.TENSOR:
            scale = self._per_shard(self._check("weight_scale", scale, per_shard=True))
        scale = scale.reshape(-1, 1)
        replace_param(layer, "weight_scale", scale)
        replace_param(layer, "weight_offset", torch.zeros_like(scale))
        return scale


class CTW8A8Dynamic(_CTInt8Weights, W8A8DynamicLinear):
    """int8 channel/tensor weights, int8 per-token dynamic activations."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        self._declare_int8(layer, input_size_per_partition, output_partition_sizes,
                           params_dtype, weight_loader)

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        self._channel_weight_scale(layer)
        super().process_weights_after_loading(layer)


class CTW8A8Static(_CTInt8Weights, W8A8StaticLinear):
    """int8 channel/tensor weights, int8 static per-tensor activations (asym allowed)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        self._declare_int8(layer, input_size_per_partition, output_partition_sizes,
                           params_dtype, weight_loader)
        shards = len(self.widths)
        self._register(layer, "input_scale", PerTensorScaleParameter,
                       torch.empty(shards, dtype=torch.float32), weight_loader, FLOATS)
        if not self.args.input_activations.symmetric:
            self._register(layer, "input_zero_point", PerTensorScaleParameter,
                           torch.empty(shards, dtype=torch.float32), weight_loader,
                           FLOATS + (torch.int8, torch.int32))

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        w_scale = self._channel_weight_scale(layer).reshape(-1)
        in_scale = self._check("input_scale", layer.input_scale.data.float(), per_shard=True)
        zero = getattr(layer, "input_zero_point", None)
        in_offset = torch.zeros_like(in_scale) if zero is None else zero.data.float()
        deq = (self._per_shard(in_scale) * w_scale).float()
        self._check("deq_scale", deq)
        rowsum = layer.weight.data.to(torch.int64).sum(dim=1).double()
        correction = self._per_shard(in_offset).double() * rowsum
        bias = getattr(layer, "bias", None)
        folded = torch.zeros_like(rowsum)
        if bias is not None and not getattr(layer, "skip_bias_add", False):
            folded = torch.round(bias.data.double() / deq.double())
        quant_bias = (folded - correction).clamp(-2**31, 2**31 - 1).to(torch.int32)
        replace_param(layer, "input_scale", in_scale)
        replace_param(layer, "input_offset", in_offset)
        replace_param(layer, "deq_scale", deq)
        replace_param(layer, "quant_bias", quant_bias)
        if zero is not None:
            delattr(layer, "input_zero_point")
        super().process_weights_after_loading(layer)


class _CTPacked:
    """``pack-quantized`` weights and their group / channel ``weight_scale`` (llm-compressor)."""

    def __init__(self, quant_description: dict[str, Any], prefix: str,
                 args: QuantizationScheme | None = None, fmt: str | None = None) -> None:
        super().__init__(quant_description, prefix)  # type: ignore[call-arg]
        self.args = args
        self.fmt = fmt
        self.bits = args.weights.num_bits

    def _declare_packed(self, layer, weight_loader) -> None:
        """weight_packed (N, K*bits/32) int32 + weight_shape (2,), after ``_begin``."""
        factor = 32 // self.bits
        if self.k % factor:
            raise self.tensor_error("weight_packed", f"cannot hold {self.k} inputs per rank: "
                                    f"{self.bits}-bit packing needs a multiple of {factor}")
        self._register(layer, "weight_packed", PackedvLLMParameter,
                       torch.empty(self.n, self.k // factor, dtype=torch.int32), weight_loader,
                       (torch.int32,), input_dim=1, output_dim=0, packed_dim=1,
                       packed_factor=factor)
        self._register(layer, "weight_shape", BasevLLMParameter,
                       torch.empty(2, dtype=torch.int64), weight_loader,
                       (torch.int64, torch.int32))

    def _declare_weight_scale(self, layer, group: int, weight_loader) -> None:
        """weight_scale (N, K/G) for group > 0, else (N, 1)."""
        if group:
            self._register(layer, "weight_scale", GroupQuantScaleParameter,
                           torch.empty(self.n, self.k // group, dtype=torch.float32),
                           weight_loader, FLOATS, input_dim=1, output_dim=0)
        else:
            self._register(layer, "weight_scale", ChannelQuantScaleParameter,
                           torch.empty(self.n, 1, dtype=torch.float32), weight_loader, FLOATS,
                           output_dim=0)

    def _unpack(self, layer) -> torch.Tensor:
        """weight_packed -> signed int8 values (N, K); weight_packed / weight_shape dropped."""
        values = unpack_from_int32(layer.weight_packed.data, self.bits,
                                   torch.Size([self.n, self.k]), packed_dim=1)
        chk.drop_params(layer, "weight_packed", "weight_shape")
        return values.to(torch.int8)


class _CTWeightOnly(_CTPacked):
    """Weight-only int4/int8: packed (``pack-quantized``) or plain int8 weights."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        self._begin(layer, input_size_per_partition, output_partition_sizes, params_dtype)
        self.group = self.group_size()
        self.packed = self.fmt == PACKED_FORMAT or self.bits < 8
        if self.packed:
            self._declare_packed(layer, weight_loader)
        else:
            self._register(layer, "weight", ModelWeightParameter,
                           torch.empty(self.n, self.k, dtype=torch.int8), weight_loader,
                           (torch.int8,), input_dim=1, output_dim=0)
        self._declare_weight_scale(layer, self.group, weight_loader)

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        if self.packed:
            replace_param(layer, "weight", self._unpack(layer))
        replace_param(layer, "weight_offset", torch.zeros_like(layer.weight_scale.data))
        super().process_weights_after_loading(layer)


class CTW8A16(_CTWeightOnly, W8A16Linear):
    """8-bit weight-only (channel or group)."""


class CTW4A16(_CTWeightOnly, W4A16Linear):
    """4-bit weight-only (channel or group)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       *args, **kwargs) -> None:
        if sum(output_partition_sizes) % 8:
            raise self.tensor_error("weight_packed", f"has {sum(output_partition_sizes)} "
                                    "outputs on this rank; int4 needs a multiple of 8")
        _CTWeightOnly.create_weights(self, layer, input_size_per_partition,
                                     output_partition_sizes, *args, **kwargs)


class CTW4A8Dynamic(_CTPacked, QuantLinearBase, W4A8DynamicLinear):
    """int4 group/channel ``pack-quantized`` weights on the W4A8_DYNAMIC linear scheme.

    The checkpoint's one-level scale goes to the scheme's legacy (version "0") tensors
    unchanged: group strategy -> ``weight_scale`` = 1 (N, 1), ``weight_scale_second`` = the
    ct scale (N, K/G); channel strategy (G = 0) -> ``weight_scale`` = the ct scale (N, 1).
    The scheme then forms ``weight_scale * weight_scale_second`` in fp32 (exact for a factor
    of 1) and packs the int4 values for the kernel: the same processed tensors, and so the
    same (fast) matmul, as a ModelSlim checkpoint of these values.
    """

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, weight_loader,
                       **extra_weight_attrs) -> None:
        n = sum(output_partition_sizes)
        if n % 8:
            raise self.tensor_error("weight_packed", f"has {n} outputs on this rank; int4 "
                                    "needs a multiple of 8")
        self.groups = check_group(self.group_size, input_size_per_partition,
                                  "input size per partition", self.prefix)
        self._begin(layer, input_size_per_partition, output_partition_sizes, params_dtype)
        self._declare_packed(layer, weight_loader)
        self._declare_weight_scale(layer, self.group_size, weight_loader)

    def process_weights_after_loading(self, layer) -> None:
        self._require_loaded()
        n, k = self.n, self.k
        cols = self.groups if self.group_size else 1
        scale = chk.loaded(layer, "weight_scale", (n, cols), self).float()
        chk.finite_nonzero(scale, "weight_scale", self)  # named as in the ct checkpoint
        chk.loaded(layer, "weight_packed", (n, k // 8), self, torch.int32)
        replace_param(layer, "weight", self._unpack(layer))
        if self.group_size:
            replace_param(layer, "weight_scale", torch.ones(n, 1))
            replace_param(layer, "weight_scale_second", scale)
            replace_param(layer, "weight_offset_second", torch.zeros_like(scale))
        else:
            replace_param(layer, "weight_scale", scale)
        replace_param(layer, "weight_offset", torch.zeros(n, 1))
        super().process_weights_after_loading(layer)


#: quant type -> adapter class for compressed-tensors tensors.
ADAPTERS: dict[str, type] = {
    "W8A8": CTW8A8Static,
    "W8A8_DYNAMIC": CTW8A8Dynamic,
    "W8A16": CTW8A16,
    "W4A16": CTW4A16,
    "W4A8_DYNAMIC": CTW4A8Dynamic,
}
