"""What both platforms share: the startup line and additional_config validation."""

from __future__ import annotations

import functools


from vllm_ascend.logger import logger

#: Keys the plugin reads from ``--additional-config`` (later issues add their own here).
ADDITIONAL_CONFIG_KEYS: dict[str, str] = {
    "moe_comm_method": "MoE communication method for every step (a registered name, e.g. "
                       "allgather, all2allv, mc2); unset: chosen per step",
}


@functools.cache
def log_startup(platform: str, kind: str) -> None:
    """One line per process naming the platform and the device backend."""
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
