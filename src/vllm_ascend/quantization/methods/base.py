"""The contracts a scheme implements; ``wrappers.py`` adapts them to vLLM's quant methods.

A scheme owns one layer type's quantized math for one quant type:
``create_weights`` declares the checkpoint tensors (names, shapes, dtypes, loaders),
``process_weights_after_loading`` validates and converts them once, and ``apply``
computes through the device facade (``vllm_ascend.device.ops``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from vllm_ascend.quantization.errors import QuantTensorError


class CheckpointBinding:
    """Where a scheme's checkpoint tensors come from, so errors can name them (additive helper).

    The quant config calls :meth:`bind_checkpoint` after constructing a scheme; schemes call
    :meth:`tensor_error`. Defaults are class attributes, so a scheme that never calls this
    base's ``__init__`` still works (messages then name ``self.prefix`` only).
    """

    prefix: str = ""
    #: Checkpoint prefixes of the layer's shards in output order (``q_proj``, ``k_proj``,
    #: ``v_proj`` for a fused ``qkv_proj``); empty means ``(self.prefix,)``.
    shard_prefixes: tuple[str, ...] = ()
    #: Checkpoint tensor name -> the file holding it (None when unknown).
    locate_tensor: Callable[[str], str | None] | None = None

    def bind_checkpoint(self, shard_prefixes: tuple[str, ...] = (),
                        locate_tensor: Callable[[str], str | None] | None = None) -> None:
        self.shard_prefixes = tuple(shard_prefixes)
        self.locate_tensor = locate_tensor

    def checkpoint_tensor_name(self, name: str, shard: int | None = None) -> str:
        """``<shard prefix>.<name>`` as written in the checkpoint (whole layer: all shards)."""
        shards = self.shard_prefixes or (self.prefix,)
        if shard is not None and 0 <= shard < len(shards):
            return f"{shards[shard]}.{name}"
        if len(shards) == 1:
            return f"{shards[0]}.{name}"
        return " / ".join(f"{s}.{name}" for s in shards)

    def tensor_error(self, name: str, problem: str, shard: int | None = None) -> QuantTensorError:
        """A QuantTensorError naming the layer, the checkpoint tensor and (if known) its file."""
        tensor = self.checkpoint_tensor_name(name, shard)
        where = ""
        if self.locate_tensor is not None:
            first = tensor.split(" / ")[0]
            found = self.locate_tensor(first)
            if found:
                where = f" in {found}"
        return QuantTensorError(
            f"layer '{self.prefix}' ({getattr(self, 'quant_type', '?')}): tensor "
            f"'{tensor}'{where} {problem}")


class _Scheme(CheckpointBinding, ABC):
    """What every scheme has: its registry key, the description, and the layer prefix."""

    quant_type: str
    layer_type: str

    def __init__(self, quant_description: dict[str, Any], prefix: str) -> None:
        self.quant_description = quant_description
        self.prefix = prefix


class AscendLinearScheme(_Scheme):
    """Quantized ``y = x @ W^T + b`` for one linear layer (or a fused qkv / gate_up)."""


    @abstractmethod
    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        weight_loader,
        **extra_weight_attrs,
    ) -> None:
        """Register the checkpoint's tensors on ``layer`` (vLLM parameter classes)."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Validate loaded tensors (shapes, finite non-zero scales) and convert for ``apply``."""

    @abstractmethod
    def apply(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (..., K) -> (..., N)`` in x's dtype."""


class AscendMoEScheme(_Scheme):
    """Quantized grouped expert MLP: rows sorted by local expert -> ``w2(swiglu(w13(x)))``."""


    @abstractmethod
    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        """Register ``w13_*`` (E, 2I, H) and ``w2_*`` (E, H, I) tensors and their scales."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Validate and convert the expert tensors once."""

    @abstractmethod
    def apply_experts(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        group_list: torch.Tensor,
        dynamic_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows ``x (M, H)`` grouped by expert, ``group_list`` int64 per-expert counts
        (E,) -> ``(M, H)``. ``dynamic_scale (M,)`` when x arrives already int8-quantised
        (MC2 dispatch with quant_mode=2)."""


class AscendAttentionScheme(_Scheme):
    """Quantized KV cache / attention inputs (e.g. int8 KV); none registered yet."""


    @abstractmethod
    def create_weights(self, layer: torch.nn.Module) -> None: ...

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None: ...
