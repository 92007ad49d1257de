"""``quant_model_description.json`` (ModelSlim's description file) parsed into one frozen value.

The file is one flat JSON object. Two kinds of entries share it:

- **per-tensor entries**: a checkpoint tensor name mapped to the quantization type that
  produced it, e.g. ``"model.layers.0.self_attn.q_proj.weight": "W8A8"`` (and the same type
  on ``.input_scale``, ``.deq_scale`` ...). ``"FLOAT"`` marks a tensor left unquantized. A
  linear layer's type is the type of its ``<prefix>.weight`` entry.
- **global fields**: ``model_quant_type`` (str), ``version`` (str), ``group_size``
  (int >= 0, 0 = per-channel), ``kv_cache_type`` / ``kv_quant_type`` / ``fa_quant_type``
  (str or null: attention / KV-cache quantization), ``metadata`` and ``optional`` (objects,
  kept verbatim), ``is_rot_used`` (bool; QuaRot rotations are not supported).

Any other key whose value is a string is a per-tensor entry; any other key with a non-string
value is kept in :attr:`QuantDescription.extras` when its name has no dot (a future global
field) and rejected when it looks like a tensor name.

:func:`parse_description` is pure (no I/O, no vLLM) and raises only :class:`DescriptionError`
for malformed input and :class:`UnsupportedSchemeError` for a type string no scheme handles;
messages name the file (``source``) and the field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from vllm_ascend.quantization.errors import DescriptionError, UnsupportedSchemeError

#: The description file ModelSlim writes next to the weights.
DESCRIPTION_FILE = "quant_model_description.json"
#: Type string of a tensor left in floating point.
FLOAT = "FLOAT"
#: Types an ``lm_head`` may have besides FLOAT (int8 weights; a quantized output projection
#: is read once per decoded token, the largest single weight of a small model). Input
#: embeddings stay FLOAT.
LM_HEAD_SCHEMES = ("W8A8_DYNAMIC", "W8A16")

_ATTENTION_KEYS = ("kv_cache_type", "kv_quant_type", "fa_quant_type")
_OPAQUE_OBJECTS = ("metadata", "optional")
_GLOBAL_KEYS = frozenset(
    ("model_quant_type", "version", "group_size", "is_rot_used")
    + _ATTENTION_KEYS + _OPAQUE_OBJECTS
)
#: ``<moe prefix>.<expert index>.<projection>.weight`` of one routed expert.
_EXPERT_WEIGHT = re.compile(r"^(?P<moe>.+\.experts)\.\d+\..+\.weight$")


def _registered() -> list[tuple[str, str]]:
    from vllm_ascend.quantization.methods.registry import registered_schemes

    return registered_schemes()


def _describe(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


@dataclass(frozen=True)
class QuantDescription:
    """One parsed description file (read-only).

    ``tensor_types`` maps checkpoint tensor names to type strings; ``raw`` is the file's
    object as read (the dict schemes receive as ``quant_description``).
    """

    source: str
    tensor_types: Mapping[str, str]
    model_quant_type: str | None = None
    version: str | None = None
    group_size: int = 0
    kv_quant_type: str | None = None
    fa_quant_type: str | None = None
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    _MAPPINGS = ("tensor_types", "extras", "raw")

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (vLLM ships the quant config to its engine processes): mapping
        proxies travel as dicts, caches are dropped."""
        state = {k: v for k, v in self.__dict__.items() if k != "_experts"}
        for key in self._MAPPINGS:
            state[key] = dict(state[key])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, MappingProxyType(value)
                               if key in self._MAPPINGS else value)

    # ------------------------------------------------------------------ per-layer lookups

    def weight_type(self, prefix: str) -> str | None:
        """Type of ``<prefix>.weight`` (or ``<prefix>.weight_packed``); None if absent."""
        for suffix in (".weight", ".weight_packed"):
            found = self.tensor_types.get(prefix + suffix)
            if found is not None:
                return found
        return None

    def shard_prefixes(self, prefix: str, packed_modules_mapping: Mapping[str, list[str]]
                       ) -> tuple[str, ...]:
        """Checkpoint prefixes holding the layer ``prefix``: the shards of a fused module
        (``...qkv_proj`` -> ``...q_proj``, ``...k_proj``, ``...v_proj``) unless the fused
        module is itself in the file; else ``(prefix,)``."""
        if self.weight_type(prefix) is None:
            for fused, shards in packed_modules_mapping.items():
                if prefix == fused or prefix.endswith("." + fused):
                    stem = prefix[: len(prefix) - len(fused)]
                    return tuple(stem + shard for shard in shards)
        return (prefix,)

    def quant_type_for(self, prefix: str,
                       packed_modules_mapping: Mapping[str, list[str]] | None = None) -> str:
        """The type of the linear layer ``prefix`` (:data:`FLOAT` when unquantized).

        A fused layer's shards must agree; otherwise :class:`DescriptionError` names both
        shards and their types. A layer with no entry is an error too (add it as FLOAT)."""
        shards = self.shard_prefixes(prefix, packed_modules_mapping or {})
        found: list[tuple[str, str]] = []
        for shard in shards:
            quant_type = self.weight_type(shard)
            if quant_type is None:
                raise DescriptionError(
                    f"{self.source}: no entry for '{shard}.weight' (layer '{prefix}'); every "
                    f"linear layer needs one, use \"{FLOAT}\" for an unquantized layer")
            found.append((shard, quant_type))
        first_shard, first_type = found[0]
        for shard, quant_type in found[1:]:
            if quant_type != first_type:
                raise DescriptionError(
                    f"{self.source}: the shards of fused layer '{prefix}' disagree: "
                    f"'{first_shard}.weight' is {first_type!r} but '{shard}.weight' is "
                    f"{quant_type!r}; all shards of a fused layer must share one type")
        return first_type

    @functools.cached_property
    def _experts(self) -> Mapping[str, tuple[tuple[str, str], ...]]:
        """MoE prefix -> ((tensor name, type), ...) over its routed experts' weights."""
        index: dict[str, dict[str, str]] = {}
        for name, quant_type in self.tensor_types.items():
            match = _EXPERT_WEIGHT.match(name)
            if match:
                index.setdefault(match["moe"], {}).setdefault(quant_type, name)
        return {moe: tuple((name, t) for t, name in types.items())
                for moe, types in index.items()}

    def expert_quant_type(self, prefix: str) -> str:
        """The one type of all routed experts under ``prefix`` (``...mlp.experts``).

        A fused entry ``<prefix>.weight`` wins; otherwise every
        ``<prefix>.<e>.<proj>.weight`` must share one type."""
        fused = self.weight_type(prefix)
        if fused is not None:
            return fused
        entries = self._experts.get(prefix)
        if not entries:
            raise DescriptionError(
                f"{self.source}: no expert weights under '{prefix}' (expected entries like "
                f"'{prefix}.0.gate_proj.weight')")
        if len(entries) > 1:
            (name_a, type_a), (name_b, type_b) = entries[0], entries[1]
            raise DescriptionError(
                f"{self.source}: the experts of '{prefix}' disagree: '{name_a}' is "
                f"{type_a!r} but '{name_b}' is {type_b!r}; one MoE layer has one type")
        return entries[0][1]

    def attention_quant_type(self) -> str | None:
        """The KV-cache / attention quantization type, or None when attention is float."""
        return self.kv_quant_type or self.fa_quant_type

    def renamed(self, rename: Callable[[str], str | None]) -> QuantDescription:
        """A copy whose tensor names went through ``rename`` (None drops an entry)."""
        renamed: dict[str, str] = {}
        for name, quant_type in self.tensor_types.items():
            new = rename(name)
            if new is not None:
                renamed[new] = quant_type
        return replace(self, tensor_types=MappingProxyType(renamed))


# ---------------------------------------------------------------------------- parsing


def _optional_str(data: Mapping[str, Any], key: str, source: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise DescriptionError(
        f"{source}: field {key!r} must be a string or null, got {_describe(value)} "
        f"({type(value).__name__})")


def _parse_globals(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    group_size = data.get("group_size", 0)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise DescriptionError(
            f"{source}: field 'group_size' must be a non-negative integer (0 = per-channel), "
            f"got {_describe(group_size)} ({type(group_size).__name__})")
    version = data.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    elif version is not None and not isinstance(version, str):
        raise DescriptionError(
            f"{source}: field 'version' must be a string, got {_describe(version)} "
            f"({type(version).__name__})")
    for key in _OPAQUE_OBJECTS:
        if key in data and not isinstance(data[key], dict):
            raise DescriptionError(
                f"{source}: field {key!r} must be an object, got {_describe(data[key])} "
                f"({type(data[key]).__name__})")
    rot = data.get("is_rot_used", False)
    if not isinstance(rot, bool):
        raise DescriptionError(
            f"{source}: field 'is_rot_used' must be true or false, got {_describe(rot)}")
    if rot:
        raise UnsupportedSchemeError(
            f"{source}: 'is_rot_used' is true (QuaRot rotated weights); rotations are not "
            "supported by vllm-ascend's quantization schemes")
    kv = _optional_str(data, "kv_cache_type", source) or _optional_str(
        data, "kv_quant_type", source)
    return {
        "model_quant_type": _optional_str(data, "model_quant_type", source),
        "version": version,
        "group_size": group_size,
        "kv_quant_type": kv,
        "fa_quant_type": _optional_str(data, "fa_quant_type", source),
    }


def parse_description(data: Any, source: str) -> QuantDescription:
    """Validate a description object (the parsed JSON of ``source``) into a
    :class:`QuantDescription`.

    Raises :class:`DescriptionError` for malformed input and :class:`UnsupportedSchemeError`
    for a per-tensor type that is neither ``"FLOAT"`` nor a registered scheme's type.
    """
    if not isinstance(data, dict):
        raise DescriptionError(
            f"{source}: must hold a JSON object mapping tensor names to quantization types, "
            f"got {type(data).__name__}")
    tensor_types: dict[str, str] = {}
    extras: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise DescriptionError(f"{source}: keys must be non-empty strings, got "
                                   f"{_describe(key)}")
        if key in _GLOBAL_KEYS:
            continue
        if isinstance(value, str):
            tensor_types[key] = value
        elif "." in key:
            raise DescriptionError(
                f"{source}: tensor entry {key!r} must map to a quantization type string "
                f"(e.g. \"W8A8_DYNAMIC\" or \"{FLOAT}\"), got {_describe(value)} "
                f"({type(value).__name__})")
        else:
            extras[key] = value
    fields = _parse_globals(data, source)

    used = sorted(set(tensor_types.values()) - {FLOAT})
    if used:
        registered = _registered()
        known = {quant_type for quant_type, _ in registered}
        for quant_type in used:
            if quant_type not in known:
                example = next(k for k, v in tensor_types.items() if v == quant_type)
                raise UnsupportedSchemeError(
                    f"{source}: entry {example!r} has quantization type {quant_type!r}, which "
                    f"no registered scheme handles; accepted: \"{FLOAT}\" or a registered "
                    "scheme: " + ", ".join(f"{q}/{l}" for q, l in registered))
    return QuantDescription(
        source=source,
        tensor_types=MappingProxyType(tensor_types),
        extras=MappingProxyType(extras),
        raw=MappingProxyType(dict(data)),
        **fields,
    )
