"""What both platforms share: the startup line and additional_config validation."""

from __future__ import annotations

import functools


from vllm_ascend.logger import logger

#: Keys the plugin reads from ``--additional-config`` (later issues add their own here).
ADDITIONAL_CONFIG_KEYS: dict[str, str] = {
    "moe_comm_method": "MoE communication method for every step (a registered name, e.g. "
                       "allgather, all2allv, mc2); unset: chosen per step",
    "eplb": "dynamic expert-parallel load balancing (docs/eplb.md): enabled, policy, "
            "num_redundant_experts, window_size, step_interval, layers_per_step, collect, "
            "expert_map_path, record_path, log_balancedness, mode, transfer_timeout_s",
    "layer_sharding": "shared-weight linear layers (docs/shared_weight.md): layers (module "
                      "suffixes, e.g. [\"o_proj\"]), prefetch_step",
}


def log_startup(platform: str, kind: str) -> None:
    """One line per process naming the platform and the device backend.

    Called from the platform's ``log_warnings`` (vLLM calls it in every process right after
    it configures logging), and from the general plugin and ``check_and_update_config`` as
    a backstop. vLLM configures logging lazily, so a call made before that would be dropped:
    the line counts as logged only once INFO records are really emitted.
    """
    import logging

    if logger.isEnabledFor(logging.INFO) and logging.getLogger("vllm").handlers:
        _log_startup_once(platform, kind)


@functools.cache
def _log_startup_once(platform: str, kind: str) -> None:
    from vllm_ascend import __version__
    from vllm_ascend.device import backend_name

    logger.info(
        "vllm-ascend %s active: platform=%s (%s), device backend=%s",
        __version__,
        platform,
        kind,
        backend_name(),
    )


def validate_additional_config(vllm_config) -> None:
    """Reject unknown ``additional_config`` keys meant for this plugin (``ascend`` section)."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    section = extra.get("ascend", {}) if isinstance(extra, dict) else {}
    if not isinstance(section, dict):
        raise ValueError(
            f"additional_config['ascend'] must be a mapping, got {type(section).__name__}"
        )
    unknown = sorted(set(section) - set(ADDITIONAL_CONFIG_KEYS))
    if unknown:
        accepted = ", ".join(sorted(ADDITIONAL_CONFIG_KEYS)) or "(none yet)"
        raise ValueError(
            f"additional_config['ascend'] has unknown key(s) {unknown}; accepted keys: {accepted}"
        )
    from vllm_ascend.eplb.config import parse_eplb_config

    parse_eplb_config(section.get("eplb"))  # every field checked at start-up, by name
    from vllm_ascend.shared_weight.config import parse_layer_sharding

    parse_layer_sharding(section.get("layer_sharding"))
