"""EPLB placement policies, by name.

A policy is a pure function (no state, no I/O)::

    policy(loads, num_ranks, num_slots, current=None) -> placement

- ``loads``: ``(L, E)`` float, tokens routed to each logical expert per MoE layer;
- ``num_ranks``: ``W`` EP ranks; ``num_slots``: ``S`` physical slots per layer
  (``S = E + redundant``, ``S % W == 0``, ``S >= E``);
- ``current``: ``(L, S)`` int64, the placement in force, or None;
- returns ``(L, S)`` int64, physical slot -> logical expert, slots rank-major.

Every output passes :func:`vllm_ascend.eplb.placement.check_placement`. Policies may take
extra keyword-only tuning arguments with defaults.

    get_policy("deepseek")(loads, 64, 320)
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from vllm_ascend.registry import Registry

#: ``policy(loads, num_ranks, num_slots, current=None) -> placement``.
Policy = Callable[..., np.ndarray]

#: The policy a config without ``policy`` uses.
DEFAULT_POLICY = "incremental"

_MODULES = ("deepseek", "incremental")


def _discover() -> None:
    for name in _MODULES:
        importlib.import_module(f"{__name__}.{name}")


POLICIES: Registry[Policy] = Registry("EPLB policy", discover=_discover)


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator: register a policy function under ``name``."""
    return POLICIES.register(name)


def get_policy(name: str) -> Policy:
    """The policy registered as ``name``; an unknown name raises ``ValueError`` listing them."""
    return POLICIES.get(name)


def list_policies() -> list[str]:
    """Names of every registered policy, sorted."""
    return POLICIES.keys()


__all__ = ["DEFAULT_POLICY", "POLICIES", "Policy", "get_policy", "list_policies",
           "register_policy"]
