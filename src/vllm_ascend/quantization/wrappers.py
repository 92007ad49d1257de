"""vLLM quant-method classes that delegate to the plugin's schemes (``methods/``).

- :class:`AscendLinearMethod`: a vLLM ``LinearMethodBase`` around one
  :class:`~vllm_ascend.quantization.methods.base.AscendLinearScheme`.
- :class:`AscendFusedMoEMethod`: a vLLM ``FusedMoEMethodBase`` around one
  :class:`~vllm_ascend.quantization.methods.base.AscendMoEScheme`, or around no scheme when
  the checkpoint's experts are FLOAT. The FLOAT/quantized choice is taken per call in
  :meth:`AscendFusedMoEMethod.apply_experts`, so an MoE layer with float experts runs
  unquantized even though the model has a quant config. Routing and dispatch (the MoE
  forward) are the fused-MoE layer's; it calls :meth:`apply_experts` with rows already
  grouped by expert.
- :class:`AscendKVCacheMethod`: vLLM's ``BaseKVCacheMethod`` around an
  :class:`~vllm_ascend.quantization.methods.base.AscendAttentionScheme` (none registered yet).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod
from vllm.model_executor.utils import set_weight_attrs

from vllm_ascend.quantization.errors import QuantTensorError, UnsupportedSchemeError
from vllm_ascend.quantization.methods.base import (
    AscendAttentionScheme,
    AscendLinearScheme,
    AscendMoEScheme,
)


@register_weight_loader_v2_supported_method
class AscendLinearMethod(LinearMethodBase):
    """Linear quant method: create / load / apply through ``scheme``.

    Registered for vLLM's ``weight_loader_v2`` so fused layers load per shard into the
    vLLM parameter classes the schemes declare.
    """

    def __init__(self, scheme: AscendLinearScheme) -> None:
        self.scheme = scheme

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        weight_loader = extra_weight_attrs.pop("weight_loader")
        self.scheme.create_weights(layer, input_size_per_partition, output_partition_sizes,
                                   input_size, output_size, params_dtype, weight_loader,
                                   **extra_weight_attrs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.scheme.process_weights_after_loading(layer)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., K) -> (..., N)``."""
        return self.scheme.apply(layer, x, bias)


class AscendLMHeadMethod(AscendLinearMethod):
    """A quantized ``lm_head`` (vLLM ``ParallelLMHead``): the logits processor calls
    :meth:`apply` like a linear layer's. Its weight cannot be tied to the float input
    embeddings: a checkpoint that quantizes the lm_head must say
    ``"tie_word_embeddings": false`` and carry ``lm_head.*`` tensors (the quantizer's
    ``--lm-head`` does both)."""

    def embedding(self, layer: torch.nn.Module, input_: torch.Tensor) -> torch.Tensor:
        raise UnsupportedSchemeError(f"{self.scheme.prefix}: a quantized lm_head is not an "
                                     "input embedding")

    def tie_weights(self, layer: torch.nn.Module, embed_tokens: torch.nn.Module):
        raise UnsupportedSchemeError(
            f"{self.scheme.prefix} is quantized ({type(self.scheme).__name__}) but the model "
            "config ties it to the float input embeddings (tie_word_embeddings: true); set "
            '"tie_word_embeddings": false in config.json and ship lm_head.* tensors, or mark '
            f'"{self.scheme.prefix}.weight": "FLOAT"')


class AscendFusedMoEMethod(FusedMoEMethodBase):
    """MoE quant method: the experts' weights through ``scheme``, or float experts when
    ``scheme`` is None (a FLOAT MoE layer in a quantized checkpoint).

    Float experts are declared like vLLM's unquantized experts (``w13_weight`` (E, 2I, H),
    ``w2_weight`` (E, H, I) in the model dtype, vLLM's expert weight loader attributes);
    after loading they are transposed to the grouped matmul's ``(E, K, N)`` layout:
    ``w13_weight`` (E, H, 2I), ``w2_weight`` (E, I, H).
    """

    def __init__(self, moe_config: Any, scheme: AscendMoEScheme | None) -> None:
        super().__init__(moe_config)
        self.scheme = scheme

    @property
    def quantized(self) -> bool:
        """False when the experts are FLOAT in the checkpoint."""
        return self.scheme is not None

    def create_weights(self, layer: torch.nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs: Any) -> None:
        if self.scheme is not None:
            self.scheme.create_weights(layer, num_experts, hidden_size,
                                       intermediate_size_per_partition, params_dtype,
                                       **extra_weight_attrs)
            return
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition
        for name, shape in (("w13_weight", (e, 2 * i, h)), ("w2_weight", (e, h, i))):
            param = torch.nn.Parameter(torch.empty(shape, dtype=params_dtype),
                                       requires_grad=False)
            layer.register_parameter(name, param)
            set_weight_attrs(param, extra_weight_attrs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if self.scheme is not None:
            self.scheme.process_weights_after_loading(layer)
            return
        for name in ("w13_weight", "w2_weight"):
            data = getattr(layer, name).data.transpose(1, 2).contiguous()
            layer.register_parameter(name, torch.nn.Parameter(data, requires_grad=False))

    def get_fused_moe_quant_config(self, layer: torch.nn.Module) -> None:
        """The experts run through :meth:`apply_experts`, not vLLM's modular kernels."""
        return None

    def apply_experts(self, layer: torch.nn.Module, x: torch.Tensor, group_list: torch.Tensor,
                      dynamic_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``x (M, H)`` grouped by expert, ``group_list`` (E,) int64 per-expert counts
        -> ``(M, H)``. FLOAT experts: ``w2(swiglu(w13(x)))`` in the model dtype; otherwise
        the scheme's quantized experts (``dynamic_scale (M,)`` when x arrives as int8)."""
        if self.scheme is not None:
            return self.scheme.apply_experts(layer, x, group_list, dynamic_scale)
        if dynamic_scale is not None or not x.is_floating_point():
            raise QuantTensorError(
                "FLOAT experts take float rows; got pre-quantised int8 rows (dispatch must "
                "not quantise for a layer whose experts are unquantized)")
        return float_experts(layer, x, group_list)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, shared_experts: Any, shared_experts_input: Any):
        raise NotImplementedError(
            "AscendFusedMoEMethod computes experts through apply_experts(); routing and "
            "dispatch belong to the Ascend fused-MoE layer")


def float_experts(layer: torch.nn.Module, x: torch.Tensor,
                  group_list: torch.Tensor) -> torch.Tensor:
    """Unquantized grouped expert MLP (the fused-MoE path's ``grouped_mlp``) over
    ``layer.w13_weight`` (E, H, 2I) and ``layer.w2_weight`` (E, I, H); x (M, H) float, rows
    grouped by expert with counts ``group_list`` (E,). Rows past ``sum(group_list)`` are 0."""
    from vllm_ascend.ops.fused_moe.experts import grouped_mlp

    y = grouped_mlp(x, group_list, layer.w13_weight, layer.w2_weight)
    valid = torch.arange(y.shape[0], device=y.device) < group_list.sum()
    return torch.where(valid[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))


class AscendKVCacheMethod(BaseKVCacheMethod):
    """Attention / KV-cache quant method delegating to an attention scheme."""

    def __init__(self, quant_config: Any, scheme: AscendAttentionScheme) -> None:
        super().__init__(quant_config)
        self.scheme = scheme

    def create_weights(self, layer: torch.nn.Module) -> None:
        self.scheme.create_weights(layer)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.scheme.process_weights_after_loading(layer)
