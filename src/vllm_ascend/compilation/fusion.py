"""Inductor pattern pass: norm / activation + dynamic int8 quantisation -> the fused ops.

In the compiled model the W8A8_DYNAMIC / W4A8_DYNAMIC linears quantise their input per token
(``ops.npu_dynamic_quant``) right after the op that produced it. Two producers have a fused
torch_npu op, which this pass substitutes (the NPU plugin does the same on Ascend):

=========================================================  ==================================
pattern (the facade ops as the model calls them)            replacement
=========================================================  ==================================
``y, _, x_sum = npu_add_rms_norm(x, residual, w, eps)``     ``npu_add_rms_norm_dynamic_quant(
``yq, s = npu_dynamic_quant(y)``                             x, residual, w, epsilon=eps)``
``yq, s = npu_dynamic_quant(npu_swiglu(x))``                ``npu_swiglu_quant(x,
                                                             activate_left=True, quant_mode=1)``
=========================================================  ==================================

Patterns are traced from the facade's own functions (the reference backend's decomposed
aten ops and csrc calls, exactly what the model graph holds), for the model's dtype and the
epsilons models use; a norm output with any other user is left alone (the matcher refuses
a match whose intermediate values escape). The fused ops quantise the fp32 norm / SwiGLU
value directly instead of its rounding to the model dtype: identical in fp32 models, within
one rounding in bf16 ones. On the reference backend ``npu_swiglu_quant`` without smooth
scales is torch's SwiGLU + csrc's quantisation (bit-identical to the pattern, see
``device/reference/fused_fast.py``); on Ascend it is the device's one fused kernel.

:data:`stats` counts, over the process, the replacements made and the per-token quantisations
left in the graphs (``vllm_ascend::dynamic_quant_int8`` nodes: inputs no pattern covers, such
as the first layer's norm without a residual and the attention output); each graph's numbers
are logged.
"""

from __future__ import annotations

from collections import Counter

import torch
from vllm.compilation.passes.vllm_inductor_pass import (
    VllmFusionPatternMatcherPass,
    VllmPatternReplacement,
)
from vllm.config import VllmConfig

from vllm_ascend.device import ops
from vllm_ascend.logger import logger

#: RMSNorm epsilons a pattern is registered for (the pattern bakes the constant in), besides
#: the model's own (:func:`model_epsilons`).
EPSILONS = (1e-5, 1e-6)
#: Config fields holding a model's norm epsilon.
EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")


def model_epsilons(config: VllmConfig) -> tuple[float, ...]:
    """The norm epsilons of the model's config, exactly as its layers bake them into the graph.

    The matcher compares constants exactly: a checkpoint converted from GGUF stores
    ``rms_norm_eps`` as float32, so SmolLM2's is ``9.999999747378752e-06``, not ``1e-5``."""
    model = config.model_config
    hf = getattr(model, "hf_text_config", None) if model is not None else None
    found = [getattr(hf, name, None) for name in EPS_FIELDS if hf is not None]
    return tuple(float(eps) for eps in found if isinstance(eps, (int, float)))


#: Replacements made in this process, by pattern name.
stats: Counter = Counter()


class AddRMSNormDynamicQuant(VllmPatternReplacement):
    """``npu_add_rms_norm`` + ``npu_dynamic_quant`` -> ``npu_add_rms_norm_dynamic_quant``;
    x, residual ``(T, H)``, weight ``(H,)``."""

    name = "add_rms_norm_dynamic_quant"

    def __init__(self, eps: float, dtype: torch.dtype) -> None:
        self.eps, self.dtype = eps, dtype

    @property
    def pattern(self):
        eps = self.eps

        def pattern(x, residual, weight):
            y, _, x_sum = ops.npu_add_rms_norm(x, residual, weight, eps)
            yq, scale = ops.npu_dynamic_quant(y)
            return yq, scale, x_sum

        return pattern

    @property
    def replacement(self):
        eps = self.eps

        def replacement(x, residual, weight):
            yq, _, x_sum, scale, _ = ops.npu_add_rms_norm_dynamic_quant(
                x, residual, weight, epsilon=eps)
            return yq, scale, x_sum

        return replacement

    def get_inputs(self) -> list[torch.Tensor]:
        return [self.empty(5, 16, dtype=self.dtype), self.empty(5, 16, dtype=self.dtype),
                self.empty(16, dtype=self.dtype)]


class SwiGLUDynamicQuant(VllmPatternReplacement):
    """``npu_swiglu`` + ``npu_dynamic_quant`` -> ``npu_swiglu_quant``; x ``(T, 2I)``."""

    name = "swiglu_dynamic_quant"

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    @property
    def pattern(self):
        def pattern(x):
            return ops.npu_dynamic_quant(ops.npu_swiglu(x, dim=-1))

        return pattern

    @property
    def replacement(self):
        def replacement(x):
            return ops.npu_swiglu_quant(x, activate_left=True, quant_mode=1)

        return replacement

    def get_inputs(self) -> list[torch.Tensor]:
        return [self.empty(5, 32, dtype=self.dtype)]


class AscendQuantFusionPass(VllmFusionPatternMatcherPass):
    """The patterns above for the model's dtype (fp32 when unknown)."""

    def __init__(self, config: VllmConfig) -> None:
        super().__init__(config, "ascend_quant_fusion_pass")
        dtype = self.model_dtype if isinstance(self.model_dtype, torch.dtype) else torch.float32
        ops.bind()  # resolve the facade and probe the fast paths before tracing patterns
        self.epsilons = tuple(dict.fromkeys((*model_epsilons(config), *EPSILONS)))
        for eps in self.epsilons:
            self.register(AddRMSNormDynamicQuant(eps, dtype))
        self.register(SwiGLUDynamicQuant(dtype))
        self.dump_patterns(config, self.pm_pass)

    def uuid(self) -> str:
        """The source hash plus the registered epsilons and dtype (Inductor's cache key)."""
        return f"{super().uuid()}-{self.epsilons}-{self.model_dtype}"

    def __call__(self, graph: torch.fx.Graph) -> None:
        super().__call__(graph)
        left = sum(1 for node in graph.nodes if node.op == "call_function"
                   and "dynamic_quant_int8" in str(node.target))
        stats["replaced"] += self.matched_count
        stats["unfused_quant"] += left
        logger.info("vllm-ascend fusion: %d norm/activation + quant patterns replaced, %d "
                    "per-token quantisations left unfused in this graph", self.matched_count,
                    left)
