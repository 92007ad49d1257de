"""Auto-detection of ModelSlim checkpoints that declare no quantization config.

A ModelSlim output directory often has a plain float ``config.json`` (no
``quantization_config``) and ``quant_model_description.json`` beside int8 weights; without
detection vLLM would load the int8 tensors into float parameters. The platform's
``check_and_update_config`` calls :func:`maybe_enable_ascend_quantization` (which needs the
whole ``VllmConfig``: vLLM has already built ``vllm_config.quant_config`` by then, so the
config must be rebuilt, not just renamed).
"""

from __future__ import annotations

import os
from typing import Any

from vllm_ascend.logger import logger
from vllm_ascend.quantization.description import DESCRIPTION_FILE
from vllm_ascend.quantization.modelslim_config import ASCEND


def has_description_file(model: str, revision: str | None = None) -> bool:
    """True when ``model`` (a local directory or a Hugging Face repo id) has the file."""
    if os.path.isdir(model):
        return os.path.isfile(os.path.join(model, DESCRIPTION_FILE))
    try:
        from vllm.transformers_utils.repo_utils import file_or_path_exists

        return bool(file_or_path_exists(model, DESCRIPTION_FILE, revision))
    except Exception:  # noqa: BLE001 - offline, no such repo, hub errors: not detected
        return False


def maybe_detect_ascend_quantization(model_config: Any) -> bool:
    """Set ``model_config.quantization = "ascend"`` when the model has no quantization
    method and its directory holds ``quant_model_description.json``; True if it did."""
    if model_config is None or getattr(model_config, "quantization", None) is not None:
        return False
    if not has_description_file(model_config.model, getattr(model_config, "revision", None)):
        return False
    model_config.quantization = ASCEND
    logger.info("vllm-ascend: %s has %s and no quantization config: using quantization=%r",
                model_config.model, DESCRIPTION_FILE, ASCEND)
    return True


def maybe_enable_ascend_quantization(vllm_config: Any) -> bool:
    """Detection for a whole ``VllmConfig``: on a hit, also build ``vllm_config.quant_config``
    (vLLM computed it, as None, before the platform hook runs). True if enabled."""
    model_config = getattr(vllm_config, "model_config", None)
    if not maybe_detect_ascend_quantization(model_config):
        return False
    from vllm.config import VllmConfig

    vllm_config.quant_config = VllmConfig.get_quantization_config(
        model_config, vllm_config.load_config)
    return True
