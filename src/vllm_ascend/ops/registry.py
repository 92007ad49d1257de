"""Register the plugin's layer replacements with vLLM (``register_oot``), idempotently.

vLLM swaps a class at construction when its name is in ``op_registry_oot``: ``CustomOp``
subclasses (norms, rotary, activations, the unquantised MoE method) through
``CustomOp.register_oot``, ``PluggableLayer`` subclasses (the MoE runner) through
``PluggableLayer.register_oot``.
"""

from __future__ import annotations

from vllm_ascend.logger import logger


def replacements() -> dict[str, type]:
    """vLLM class name -> the plugin's replacement class."""
    from vllm_ascend.ops.activation import AscendSiluAndMul
    from vllm_ascend.ops.fused_moe.vllm_integration import (
        AscendMoERunner,
        AscendUnquantizedFusedMoEMethod,
    )
    from vllm_ascend.ops.layernorm import AscendRMSNorm
    from vllm_ascend.ops.rotary_embedding import AscendRotaryEmbedding

    return {
        "RMSNorm": AscendRMSNorm,
        "RotaryEmbedding": AscendRotaryEmbedding,
        "SiluAndMul": AscendSiluAndMul,
        "MoERunner": AscendMoERunner,
        "UnquantizedFusedMoEMethod": AscendUnquantizedFusedMoEMethod,
    }


def register_ops() -> list[str]:
    """Register every replacement not yet registered; returns the names registered now.

    vLLM asserts on a duplicate name, so a name already mapped to our class is skipped,
    and a name mapped to someone else's class is an error rather than a silent override.
    """
    from vllm.model_executor.custom_op import CustomOp, PluggableLayer, op_registry_oot

    done = []
    for name, cls in replacements().items():
        existing = op_registry_oot.get(name)
        if existing is cls:
            continue
        if existing is not None:
            raise RuntimeError(
                f"vLLM op {name} is already replaced by {existing.__module__}."
                f"{existing.__qualname__}; vllm-ascend cannot register {cls.__qualname__}"
            )
        base = PluggableLayer if issubclass(cls, PluggableLayer) else CustomOp
        base.register_oot(cls, name=name)
        done.append(name)
    if done:
        logger.debug("vllm-ascend replaced vLLM ops: %s", ", ".join(done))
    return done
