"""The ``layer_sharding`` section of ``--additional-config '{"ascend": {"layer_sharding": {...}}}'``.

``layers`` names each series by module suffix (``"o_proj"``: every linear layer whose
qualified name ends in ``.o_proj``); ``prefetch_step`` is how many layers ahead of use a
layer's weights are broadcast (ring of ``prefetch_step + 1`` buffers). Every field is
checked; an error names the field, the value and what is accepted. Checks that need the
model (the suffix exists, the series is uniform) are in ``shared_weight.series``; those that
need the parallel layout in :func:`check_parallel`. Imports neither torch nor vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

SECTION = "additional_config['ascend']['layer_sharding']"
#: Largest accepted ``prefetch_step`` (a ring of 9 buffers; more only costs memory).
MAX_PREFETCH_STEP = 8
#: Suffixes refused by name, with the reason (see docs/shared_weight.md).
REFUSED_SUFFIXES = {
    "kv_b_proj": "MLA attention calls kv_b_proj a data-dependent number of times per step "
                 "(never in decode, once per context chunk in prefill) and differently on "
                 "DP ranks running dummy batches, so the ranks' broadcasts would not match; "
                 "it also reads kv_b_proj's weights at load time (absorbed into W_UK / W_UV "
                 "on every rank), so sharding it would save nothing",
}


class LayerShardingConfigError(ValueError):
    """A bad ``layer_sharding`` section: names the field, the value and what is accepted."""


@dataclass(frozen=True)
class LayerShardingConfig:
    """Shared-weight linear layers (off when ``layers`` is empty)."""

    #: module suffixes, one series each (e.g. ``("o_proj", "q_b_proj")``)
    layers: tuple[str, ...] = ()
    #: layers ahead of use whose broadcast is started (0: fetched right before use)
    prefetch_step: int = 1

    @property
    def enabled(self) -> bool:
        return bool(self.layers)

    @property
    def ring_size(self) -> int:
        return self.prefetch_step + 1


_FIELDS = tuple(f.name for f in fields(LayerShardingConfig))


def _layers(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise LayerShardingConfigError(
            f"{SECTION}['layers'] = {v!r}: must be a list of module suffixes (strings), "
            "e.g. [\"o_proj\"]")
    bad = [s for s in v if s.startswith(".") or s.endswith(".")]
    if bad:
        raise LayerShardingConfigError(
            f"{SECTION}['layers'] = {v!r}: {bad[0]!r} is not a module suffix (no leading or "
            "trailing dot)")
    if len(set(v)) != len(v):
        dup = sorted({s for s in v if v.count(s) > 1})
        raise LayerShardingConfigError(f"{SECTION}['layers'] = {v!r}: {dup} listed twice")
    refused = [s for s in v if s.rsplit(".", 1)[-1] in REFUSED_SUFFIXES]
    if refused:
        name = refused[0].rsplit(".", 1)[-1]
        raise LayerShardingConfigError(
            f"{SECTION}['layers'] = {v!r}: {name!r} cannot be sharded: "
            f"{REFUSED_SUFFIXES[name]}")
    return tuple(v)


def parse_layer_sharding(section: Any) -> LayerShardingConfig:
    """``section`` (the parsed JSON object, or None) -> :class:`LayerShardingConfig`."""
    if section is None:
        return LayerShardingConfig()
    if not isinstance(section, dict):
        raise LayerShardingConfigError(
            f"{SECTION} must be a JSON object, got {type(section).__name__}")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise LayerShardingConfigError(
            f"{SECTION} has unknown key(s) {unknown}; accepted keys: {', '.join(_FIELDS)}")
    out: dict[str, Any] = {}
    if "layers" in section:
        out["layers"] = _layers(section["layers"])
    if "prefetch_step" in section:
        p = section["prefetch_step"]
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= MAX_PREFETCH_STEP:
            raise LayerShardingConfigError(
                f"{SECTION}['prefetch_step'] = {p!r}: must be an integer in "
                f"[0, {MAX_PREFETCH_STEP}]")
        out["prefetch_step"] = p
    return LayerShardingConfig(**out)


def layer_sharding_from(additional_config: Any) -> LayerShardingConfig:
    """The ``layer_sharding`` config inside vLLM's ``additional_config`` (off when absent)."""
    section = (additional_config or {}).get("ascend") or {}
    return parse_layer_sharding(
        section.get("layer_sharding") if isinstance(section, dict) else None)


def check_parallel(cfg: LayerShardingConfig, *, pipeline_parallel_size: int,
                   data_parallel_size: int) -> bool:
    """Checks against the parallel layout; True when sharding is active.

    The sharding group is the DP replicas holding the same TP (and PP) rank, so its size is
    the DP size: 1 makes sharding a no-op (the caller warns once). Pipeline parallelism is
    refused: a PP stage would need its own series and ring, and vLLM may interleave
    micro-batches across stages, which the in-order ring does not model.
    """
    if not cfg.enabled:
        return False
    if pipeline_parallel_size > 1:
        raise LayerShardingConfigError(
            f"{SECTION}: pipeline parallelism is not supported (pipeline_parallel_size="
            f"{pipeline_parallel_size}); use data parallelism (with TP / EP) only")
    return data_parallel_size > 1


def check_series_length(cfg: LayerShardingConfig, suffix: str, num_layers: int,
                        group_size: int) -> None:
    """A series must give every rank of the group a layer and be longer than the ring."""
    if num_layers < group_size:
        raise LayerShardingConfigError(
            f"{SECTION}['layers']: series {suffix!r} has {num_layers} layer(s), fewer than "
            f"the {group_size} ranks of the sharding group (each rank must own one)")
    if cfg.prefetch_step >= num_layers:
        raise LayerShardingConfigError(
            f"{SECTION}['prefetch_step'] = {cfg.prefetch_step}: must be smaller than the "
            f"{num_layers} layers of series {suffix!r} (accepted: 0..{num_layers - 1})")
