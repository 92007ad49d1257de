"""Ascend quantization: ModelSlim (``--quantization ascend``) and compressed-tensors checkpoints,
mapped onto one registry of schemes (``methods/``) that compute through the device facade.

:func:`register` (called by the general plugin when the plugin is active) adds two configs
to vLLM's registry: ``"ascend"`` (:mod:`.modelslim_config`) and
``"ascend-compressed-tensors"`` (:mod:`.compressed_tensors_config`).
"""

from __future__ import annotations


def register() -> None:
    """Register the plugin's quantization configs with vLLM (idempotent)."""
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        register_quantization_config,
    )

    from vllm_ascend.quantization.compressed_tensors_config import (
        CT_NAME,
        AscendCompressedTensorsConfig,
    )
    from vllm_ascend.quantization.modelslim_config import ASCEND, AscendQuantConfig

    for name, config_cls in ((ASCEND, AscendQuantConfig),
                             (CT_NAME, AscendCompressedTensorsConfig)):
        if name not in QUANTIZATION_METHODS:
            register_quantization_config(name)(config_cls)
