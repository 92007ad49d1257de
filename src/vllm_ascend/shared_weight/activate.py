"""Turn ``layer_sharding`` on for a vLLM config (the platform's ``check_and_update_config``).

Validates the section against the parallel layout and, when sharding is active, points
``load_config.load_format`` at the sharding loader (``shared_weight.loader``). A sharding
group of one rank (DP size 1) leaves everything as it is, with one warning.
"""

from __future__ import annotations

from vllm_ascend.logger import logger
from vllm_ascend.shared_weight.config import (
    SECTION,
    LayerShardingConfigError,
    check_parallel,
    layer_sharding_from,
)


def configure_layer_sharding(vllm_config) -> bool:
    """True when the sharding loader was selected."""
    cfg = layer_sharding_from(getattr(vllm_config, "additional_config", None))
    if not cfg.enabled:
        return False
    parallel = vllm_config.parallel_config
    if not check_parallel(cfg, pipeline_parallel_size=parallel.pipeline_parallel_size,
                          data_parallel_size=parallel.data_parallel_size):
        logger.warning("%s: the sharding group (the DP replicas of a TP rank) has one rank "
                       "(data_parallel_size=1): layer sharding is off", SECTION)
        return False
    from vllm_ascend.shared_weight.loader import LOAD_FORMAT, REPLACEABLE

    load = vllm_config.load_config
    fmt = str(load.load_format)
    if fmt != LOAD_FORMAT:
        if fmt not in REPLACEABLE:
            raise LayerShardingConfigError(
                f"{SECTION}: load_format={fmt!r} is not supported with layer sharding; "
                f"accepted: {', '.join(REPLACEABLE)}")
        load.load_format = LOAD_FORMAT
    logger.info("%s: series %s sharded over %d DP ranks, prefetch_step %d", SECTION,
                ", ".join(cfg.layers), parallel.data_parallel_size, cfg.prefetch_step)
    return True
