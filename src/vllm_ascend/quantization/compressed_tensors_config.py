"""compressed-tensors (llm-compressor) checkpoints on the plugin's schemes.

**Registration choice: a distinct name plus an override, not a global replacement.** The
config registers as ``"ascend-compressed-tensors"`` (only when the plugin is active: the
general plugin registers nothing otherwise) and its ``override_quantization_method``
claims every checkpoint whose ``quantization_config.quant_method`` is
``"compressed-tensors"`` (also when the user passed ``--quantization compressed-tensors``).
Why not ``register_quantization_config("compressed-tensors")``:

- vLLM's override detection raises for a *built-in* name whose config overrides, so a
  replacement under vLLM's own name could not claim checkpoints, only wait to be chosen;
- code in vLLM that checks ``isinstance(..., CompressedTensorsConfig)`` or imports vLLM's
  class directly keeps seeing vLLM's class, unchanged, instead of a look-alike;
- logs and ``model_config.quantization`` say which implementation runs.

vLLM still adds ``total_num_heads`` / ``total_num_kv_heads`` to the dict (it keys on the
checkpoint's quant_method), which :meth:`AscendCompressedTensorsConfig.from_config` drops.

**Mapping.** The config is parsed with the ``compressed_tensors`` library's own
``QuantizationConfig`` / ``QuantizationScheme`` / ``QuantizationArgs``. Per layer, vLLM's
target matching (exact name, ``re:`` regex, module class, fused shards) picks a config group,
and :func:`quant_type_of` maps its args onto a scheme (INT types only, symmetric weights):

===========================================================  ==============
weights / input_activations                                  scheme
===========================================================  ==============
8-bit channel|tensor / 8-bit tensor static (sym or asym)     W8A8
8-bit channel|tensor / 8-bit token dynamic symmetric         W8A8_DYNAMIC
4-bit group|channel / none                                   W4A16
8-bit group|channel / none                                   W8A16
4-bit group|channel / 8-bit token dynamic                    W4A8_DYNAMIC
===========================================================  ==============

``ignore`` entries and unmatched layers run unquantized. The tensor conversion each scheme
needs lives in :mod:`.compressed_tensors_layouts` (every type above has an adapter; a mapped
type without one would raise :class:`UnsupportedSchemeError`). W4A8_DYNAMIC's one-level
group/channel scale loads exactly as ModelSlim's two levels with a per-channel level of 1,
and runs the plugin's W4A8_DYNAMIC linear scheme, whose int8 per-token activations are the
config's token-dynamic activation quantisation. MoE experts and KV-cache schemes from
compressed-tensors are not supported yet (clear errors, never silent).
"""

from __future__ import annotations

from typing import Any

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization import QuantizationConfig as CTConfig
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from vllm_ascend.quantization.description import FLOAT
from vllm_ascend.quantization.errors import AscendQuantizationError, UnsupportedSchemeError

#: This config's name in vLLM's registry.
CT_NAME = "ascend-compressed-tensors"
#: quant_method value llm-compressor writes.
CT_METHOD = "compressed-tensors"
_SOURCE = "config.json quantization_config (compressed-tensors)"
_VLLM_ADDED_KEYS = ("total_num_heads", "total_num_kv_heads")


def _args_text(args: QuantizationArgs | None) -> str:
    if args is None:
        return "none"
    return (f"{args.type}{args.num_bits} {args.strategy}"
            f"{' dynamic' if args.dynamic else ''}{'' if args.symmetric else ' asymmetric'}")


def quant_type_of(scheme: QuantizationScheme) -> str:
    """The plugin quant type for one compressed-tensors scheme (FLOAT when the weights are
    not quantized); UnsupportedSchemeError for anything else."""
    w, a = scheme.weights, scheme.input_activations
    if w is None and a is None:
        return FLOAT
    what = f"weights {_args_text(w)}, input_activations {_args_text(a)}"
    unsupported = UnsupportedSchemeError(
        f"{_SOURCE}: scheme ({what}) has no Ascend equivalent; supported: int8 channel|tensor "
        "weights with int8 tensor-static (W8A8) or token-dynamic (W8A8_DYNAMIC) activations, "
        "int4/int8 group|channel weight-only (W4A16/W8A16), int4 weights with int8 "
        "token-dynamic activations (W4A8_DYNAMIC); symmetric INT weights only")
    if w is None or w.type != "int" or not w.symmetric or w.dynamic \
            or w.actorder in ("group", "dynamic") or scheme.output_activations is not None \
            or (a is not None and a.type != "int"):
        raise unsupported
    if a is None:
        if w.strategy in ("group", "channel") and w.num_bits in (4, 8):
            return "W4A16" if w.num_bits == 4 else "W8A16"
        raise unsupported
    if a.num_bits != 8:
        raise unsupported
    if w.num_bits == 8 and w.strategy in ("channel", "tensor"):
        if a.strategy == "tensor" and not a.dynamic:
            return "W8A8"
        if a.strategy == "token" and a.dynamic is True and a.symmetric:
            return "W8A8_DYNAMIC"
    if w.num_bits == 4 and w.strategy in ("group", "channel") and a.strategy == "token" \
            and a.dynamic is True:
        return "W4A8_DYNAMIC"
    raise unsupported


class AscendCompressedTensorsConfig(QuantizationConfig):
    """llm-compressor checkpoints through the plugin's linear schemes."""

    def __init__(self, config: CTConfig) -> None:
        super().__init__()
        self.config = config
        self.groups: dict[str, QuantizationScheme] = {}
        for scheme in config.config_groups.values():
            for target in scheme.targets:
                self.groups[target] = scheme
        self.ignore: list[str] = list(config.ignore or [])

    @classmethod
    def get_name(cls) -> str:
        return CT_NAME

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AscendCompressedTensorsConfig:
        data = {k: v for k, v in dict(config).items() if k not in _VLLM_ADDED_KEYS}
        for key in ("transform_config", "sparsity_config"):
            if data.get(key):
                raise UnsupportedSchemeError(
                    f"{_SOURCE}: {key!r} (rotations / sparsity) is not supported on Ascend; "
                    "running without it would compute a different model")
        try:
            parsed = CTConfig.model_validate(data)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise AscendQuantizationError(f"{_SOURCE}: invalid: {exc}") from exc
        if parsed.quant_method != CT_METHOD:
            raise AscendQuantizationError(
                f"{_SOURCE}: quant_method is {parsed.quant_method!r}; accepted: {CT_METHOD!r}")
        return cls(parsed)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        if isinstance(hf_quant_cfg, dict) and hf_quant_cfg.get("quant_method") == CT_METHOD \
                and user_quant in (None, CT_METHOD, CT_NAME):
            return CT_NAME
        return None

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Rename layer-path targets / ignore entries (not class names or ``re:`` patterns)."""
        def rename(target: str) -> str | None:
            if "." in target and not target.startswith("re:"):
                return hf_to_vllm_mapper.map_name(target)
            return target

        self.groups = {t: s for k, s in self.groups.items() if (t := rename(k)) is not None}
        self.ignore = [t for k in self.ignore if (t := rename(k)) is not None]

    # ------------------------------------------------------------------ per layer

    def layer_quant_type(self, layer: torch.nn.Module, prefix: str
                         ) -> tuple[str, QuantizationScheme | None]:
        """(quant type, scheme args) of the linear layer ``prefix``; FLOAT when ignored or
        unmatched. The shards of a fused layer must map to one type."""
        from vllm.model_executor.layers.quantization.compressed_tensors.utils import (
            find_matched_target,
            should_ignore_layer,
        )

        try:
            if should_ignore_layer(prefix, self.ignore, self.packed_modules_mapping):
                return FLOAT, None
        except ValueError as exc:
            raise AscendQuantizationError(f"{_SOURCE}: {exc}") from exc
        shards = _shards(prefix, self.packed_modules_mapping)
        found: list[tuple[str, str, QuantizationScheme | None]] = []
        for shard in shards:
            target = find_matched_target(shard, layer, self.groups.keys(), {})
            scheme = self.groups.get(target) if target is not None else None
            found.append((shard, FLOAT if scheme is None else quant_type_of(scheme), scheme))
        for shard, quant_type, _ in found[1:]:
            if quant_type != found[0][1]:
                raise AscendQuantizationError(
                    f"{_SOURCE}: the shards of fused layer '{prefix}' disagree: "
                    f"'{found[0][0]}' is {found[0][1]} but '{shard}' is {quant_type}")
        return found[0][1], found[0][2]

    def get_quant_method(self, layer: torch.nn.Module, prefix: str
                         ) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.attention import Attention
        from vllm.model_executor.layers.fused_moe import RoutedExperts
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

        from vllm_ascend.quantization.compressed_tensors_layouts import ADAPTERS
        from vllm_ascend.quantization.wrappers import AscendLinearMethod

        if isinstance(layer, LinearBase):
            quant_type, scheme = self.layer_quant_type(layer, prefix)
            if quant_type == FLOAT:
                return UnquantizedLinearMethod()
            adapter = ADAPTERS.get(quant_type)
            if adapter is None:
                raise UnsupportedSchemeError(
                    f"{_SOURCE}: layer '{prefix}' maps to {quant_type}, but no adapter converts "
                    "compressed-tensors tensors for that scheme yet; supported: "
                    + ", ".join(sorted(ADAPTERS)))
            weights = scheme.weights
            group = weights.group_size if weights.strategy == "group" else 0
            fmt = scheme.format or self.config.format
            layer_scheme = adapter({"group_size": group or 0, "quant_method": CT_METHOD},
                                   prefix, scheme, fmt)
            layer_scheme.bind_checkpoint(_shards(prefix, self.packed_modules_mapping))
            return AscendLinearMethod(layer_scheme)
        if isinstance(layer, RoutedExperts) and self._experts_quantized(layer, prefix):
            raise UnsupportedSchemeError(
                f"{_SOURCE}: MoE layer '{prefix}': compressed-tensors expert quantization is "
                "not supported on Ascend yet (list the experts in 'ignore' to run them float)")
        if isinstance(layer, Attention) and self.config.kv_cache_scheme is not None:
            raise UnsupportedSchemeError(
                f"{_SOURCE}: kv_cache_scheme is not supported on Ascend yet")
        return None

    def _experts_quantized(self, layer: torch.nn.Module, prefix: str) -> bool:
        """vLLM's rule: experts match a target directly, or through a "Linear" target."""
        from vllm.model_executor.layers.quantization.compressed_tensors.utils import (
            find_matched_target,
            should_ignore_layer,
        )

        if should_ignore_layer(prefix, self.ignore, {}):
            return False
        return "Linear" in self.groups or \
            find_matched_target(prefix, layer, self.groups.keys(), {}) is not None


def _shards(prefix: str, packed: dict[str, list[str]]) -> tuple[str, ...]:
    """``...qkv_proj`` -> its unfused names per the model's packed_modules_mapping."""
    for fused, shards in packed.items():
        if prefix == fused or prefix.endswith("." + fused):
            stem = prefix[: len(prefix) - len(fused)]
            return tuple(stem + shard for shard in shards)
    return (prefix,)
