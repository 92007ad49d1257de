"""Environment variables read by the plugin, each parsed in one place with a clear error."""

from __future__ import annotations

import os

#: Which platform the plugin provides: auto (default), npu, cpu or off.
PLATFORM_ENV = "VLLM_ASCEND_PLATFORM"
PLATFORM_CHOICES = ("auto", "npu", "cpu", "off")


class AscendConfigError(ValueError):
    """A setting the plugin cannot accept; the message names the setting and accepted values."""


def platform_mode() -> str:
    """The value of VLLM_ASCEND_PLATFORM, validated (default "auto")."""
    raw = os.environ.get(PLATFORM_ENV, "")
    mode = raw.strip().lower() or "auto"
    if mode not in PLATFORM_CHOICES:
        raise AscendConfigError(
            f"environment variable {PLATFORM_ENV}={raw!r} is not valid; "
            f"accepted values: {', '.join(PLATFORM_CHOICES)}"
        )
    return mode
