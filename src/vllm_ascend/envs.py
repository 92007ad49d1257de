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


#: TEST ONLY: a deliberate decode slowdown (``bench ab``'s demonstration that a regression is
#: flagged). A fraction: after each decode step's forward the worker sleeps that fraction of
#: the forward's duration (0.2: the forward takes 1.2x as long). Unset or 0: no effect.
DECODE_SLOWDOWN_ENV = "VLLM_ASCEND_TEST_DECODE_SLOWDOWN"
DECODE_SLOWDOWN_MAX = 10.0


def decode_slowdown() -> float:
    """The value of VLLM_ASCEND_TEST_DECODE_SLOWDOWN as a fraction in [0, 10] (default 0)."""
    raw = os.environ.get(DECODE_SLOWDOWN_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= DECODE_SLOWDOWN_MAX:  # also rejects nan
        raise AscendConfigError(
            f"environment variable {DECODE_SLOWDOWN_ENV}={raw!r} is not valid; accepted "
            f"values: a fraction from 0 to {DECODE_SLOWDOWN_MAX:g} (e.g. 0.2), or unset")
    return value
