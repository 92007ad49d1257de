"""The ``eplb`` section of ``--additional-config '{"ascend": {"eplb": {...}}}'``, validated.

Field names follow vLLM's ``EPLBConfig`` where they mean the same thing (``window_size``,
``step_interval``, ``num_redundant_experts``, ``log_balancedness``, ``policy``); vLLM's own
``--enable-eplb`` is refused by vLLM on non-CUDA platforms, so the plugin reads this
section instead. Every field is checked; an error names the field, the value and what is
accepted. Imports neither torch nor vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

SECTION = "additional_config['ascend']['eplb']"
COLLECT = ("prefill", "decode", "all")
MODES = ("layerwise", "stop_the_world")


class EplbConfigError(ValueError):
    """A bad ``eplb`` section: the message names the field, the value and what is accepted."""


@dataclass(frozen=True)
class EplbConfig:
    """Dynamic EPLB settings (defaults: vLLM's where the field is vLLM's)."""

    enabled: bool = False
    #: a registered policy name (``vllm_ascend.eplb.policies.list_policies()``); None: the
    #: default policy
    policy: str | None = None
    #: R: extra physical expert slots per MoE layer (E + R must be a multiple of the EP size)
    num_redundant_experts: int = 0
    #: steps of expert load kept for planning
    window_size: int = 1000
    #: steps between rebalances
    step_interval: int = 3000
    #: MoE layers whose experts move per step while a new placement is applied
    layers_per_step: int = 1
    #: which steps' loads are recorded
    collect: str = "all"
    #: a placement JSON to start from (``docs/eplb.md``, "Placement file")
    expert_map_path: str | None = None
    #: where the live placement is written after each applied rebalance
    record_path: str | None = None
    #: log the balancedness (mean / max rank load) at every rebalance
    log_balancedness: bool = False
    #: "layerwise" (serving never pauses) or "stop_the_world" (all layers at once,
    #: blocking: for comparison only)
    mode: str = "layerwise"
    #: seconds a layer's transfer may take before it is abandoned (layer keeps its weights)
    transfer_timeout_s: float = 30.0
    #: the load a rebalance plans for (``eplb/forecast.py``): "trend" (the window's
    #: per-expert linear trend, a quarter interval ahead) or "window" (its sum, as vLLM)
    load_estimate: str = "trend"

    @property
    def policy_name(self) -> str:
        from vllm_ascend.eplb.policies import DEFAULT_POLICY

        return self.policy or DEFAULT_POLICY


_FIELDS = {f.name: f for f in fields(EplbConfig)}


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise EplbConfigError(f"{SECTION}['{name}'] = {v!r}: must be true or false")
    return v


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise EplbConfigError(f"{SECTION}['{name}'] = {v!r}: must be an integer >= {lo}")
    return v


def _choice(name: str, v: Any, accepted: tuple[str, ...]) -> str:
    if v not in accepted:
        raise EplbConfigError(
            f"{SECTION}['{name}'] = {v!r}: accepted values: {', '.join(accepted)}")
    return v


def _path(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise EplbConfigError(f"{SECTION}['{name}'] = {v!r}: must be a file path (string)")
    return v


def parse_eplb_config(section: Any) -> EplbConfig:
    """``section`` (the parsed JSON object, or None) -> :class:`EplbConfig`.

    Unknown keys, wrong types and out-of-range values raise :class:`EplbConfigError`.
    Checks that need the model (E + R a multiple of the EP size, EP > 1) are in
    :func:`check_against_model`.
    """
    if section is None:
        return EplbConfig()
    if not isinstance(section, dict):
        raise EplbConfigError(f"{SECTION} must be a JSON object, got {type(section).__name__}")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise EplbConfigError(f"{SECTION} has unknown key(s) {unknown}; accepted keys: "
                              f"{', '.join(_FIELDS)}")
    v = dict(section)
    out: dict[str, Any] = {}
    for name in ("enabled", "log_balancedness"):
        if name in v:
            out[name] = _bool(name, v[name])
    for name, lo in (("num_redundant_experts", 0), ("window_size", 1), ("step_interval", 1),
                     ("layers_per_step", 1)):
        if name in v:
            out[name] = _int(name, v[name], lo)
    if "collect" in v:
        out["collect"] = _choice("collect", v["collect"], COLLECT)
    if "mode" in v:
        out["mode"] = _choice("mode", v["mode"], MODES)
    if "load_estimate" in v:
        from vllm_ascend.eplb.forecast import ESTIMATES

        out["load_estimate"] = _choice("load_estimate", v["load_estimate"], ESTIMATES)
    for name in ("expert_map_path", "record_path"):
        if name in v:
            out[name] = _path(name, v[name])
    if "transfer_timeout_s" in v:
        t = v["transfer_timeout_s"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise EplbConfigError(f"{SECTION}['transfer_timeout_s'] = {t!r}: must be a "
                                  "number of seconds > 0")
        out["transfer_timeout_s"] = float(t)
    if "policy" in v and v["policy"] is not None:
        from vllm_ascend.eplb.policies import list_policies

        if v["policy"] not in list_policies():
            raise EplbConfigError(f"{SECTION}['policy'] = {v['policy']!r}: registered "
                                  f"policies: {', '.join(list_policies())}")
        out["policy"] = v["policy"]
    return EplbConfig(**out)


def eplb_config_from(additional_config: Any) -> EplbConfig:
    """The EPLB config inside vLLM's ``additional_config`` (disabled when absent)."""
    section = (additional_config or {}).get("ascend") or {}
    return parse_eplb_config(section.get("eplb") if isinstance(section, dict) else None)


def check_against_model(cfg: EplbConfig, num_experts: int, ep_size: int) -> int:
    """Checks that need the layer: returns S = E + R physical slots per layer."""
    if ep_size < 2:
        raise EplbConfigError(
            f"{SECTION}: EPLB needs expert parallelism over more than one rank "
            f"(--enable-expert-parallel with TP or DP > 1); this MoE layer has EP size "
            f"{ep_size}")
    slots = num_experts + cfg.num_redundant_experts
    if slots % ep_size:
        raise EplbConfigError(
            f"{SECTION}['num_redundant_experts'] = {cfg.num_redundant_experts}: experts + "
            f"redundant = {slots} must be a multiple of the EP size {ep_size}")
    if slots // ep_size > num_experts:
        raise EplbConfigError(
            f"{SECTION}['num_redundant_experts'] = {cfg.num_redundant_experts}: {slots // ep_size} "
            f"slots per rank exceed the {num_experts} experts, so a rank would hold two "
            f"replicas of one expert; at most {num_experts * ep_size - num_experts} redundant")
    return slots
