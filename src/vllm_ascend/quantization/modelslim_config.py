"""``--quantization ascend``: vLLM's quantization config for ModelSlim checkpoints.

A ModelSlim checkpoint is a model directory with ``quant_model_description.json`` (parsed by
:mod:`.description`) beside the safetensors. vLLM reaches this config three ways:

1. ``--quantization ascend``: vLLM's ``get_quant_config`` finds the description through
   :meth:`AscendQuantConfig.get_config_filenames` and hands its parsed object to
   :meth:`AscendQuantConfig.from_config`;
2. ``config.json`` with ``"quantization_config": {"quant_method": "ascend"}``:
   :meth:`AscendQuantConfig.override_quantization_method` claims it, vLLM passes that small
   object to ``from_config``, and :meth:`AscendQuantConfig.maybe_update_config` (called by
   vLLM right after) reads the description from the model directory;
3. no quantization config at all but a description file: the platform calls
   :func:`vllm_ascend.quantization.detect.maybe_enable_ascend_quantization`.

Per layer, :meth:`AscendQuantConfig.get_quant_method` picks:

- linear layers: :class:`~.wrappers.AscendLinearMethod` around the registered scheme for
  the layer's type (fused layers: their shards' common type), or vLLM's
  ``UnquantizedLinearMethod`` for ``FLOAT``;
- MoE experts (vLLM ``RoutedExperts``): :class:`~.wrappers.AscendFusedMoEMethod`, with the
  experts' scheme or none for FLOAT experts (decided again at every forward);
- attention: None unless the description names a KV-cache / attention type, then
  :class:`~.wrappers.AscendKVCacheMethod` around that attention scheme;
- lm_head (vLLM ``ParallelLMHead``): None when FLOAT, else
  :class:`~.wrappers.AscendLMHeadMethod` around a linear scheme of
  :data:`~.description.LM_HEAD_SCHEMES` (the checkpoint must not tie it to the input
  embeddings, which stay float); a quantized input embedding is rejected.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from vllm_ascend.quantization.checkpoint_files import CheckpointFiles
from vllm_ascend.quantization.description import (
    DESCRIPTION_FILE,
    FLOAT,
    LM_HEAD_SCHEMES,
    QuantDescription,
    parse_description,
)
from vllm_ascend.quantization.errors import DescriptionError, UnsupportedSchemeError
from vllm_ascend.quantization.methods.registry import get_scheme_class

#: The method name: ``--quantization ascend`` / ``"quant_method": "ascend"``.
ASCEND = "ascend"


class AscendQuantConfig(QuantizationConfig):
    """ModelSlim checkpoints on the plugin's schemes (see the module docstring)."""

    def __init__(self, description: dict[str, Any] | QuantDescription | None = None,
                 model_dir: str | None = None) -> None:
        super().__init__()
        self._pending = description if isinstance(description, dict) else None
        self._description = description if isinstance(description, QuantDescription) else None
        self.files = CheckpointFiles(model_dir)
        self._raw_copy: dict[str, Any] | None = None

    # ------------------------------------------------------------------ vLLM's interface

    @classmethod
    def get_name(cls) -> str:
        return ASCEND

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # no CUDA capability involved

    @staticmethod
    def get_config_filenames() -> list[str]:
        return [DESCRIPTION_FILE]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AscendQuantConfig:
        """``config`` is the description object, or config.json's ``quantization_config``
        (``{"quant_method": "ascend"}``), in which case the description is read from the
        model directory by :meth:`maybe_update_config`."""
        if isinstance(config, dict) and config.get("quant_method") == ASCEND:
            return cls(None)
        return cls(config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        if isinstance(hf_quant_cfg, dict) and hf_quant_cfg.get("quant_method") == ASCEND:
            return ASCEND
        return None

    def maybe_update_config(self, model_name: str, hf_config: Any = None,
                            revision: str | None = None) -> None:
        """Learn the model directory; read and parse the description now (errors early)."""
        self.files = CheckpointFiles(model_name)
        if self._description is not None:
            return
        local = os.path.join(model_name, DESCRIPTION_FILE)
        if self._pending is not None:
            source = local if os.path.isfile(local) else DESCRIPTION_FILE
            self._description = parse_description(self._pending, source)
            self._pending = None
            return
        self._description = parse_description(
            read_description(model_name, revision), local if os.path.isdir(model_name)
            else f"{model_name}/{DESCRIPTION_FILE}")

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Rename description entries from the checkpoint's names to vLLM's module names."""
        self._description = self.description.renamed(hf_to_vllm_mapper.map_name)

    @property
    def description(self) -> QuantDescription:
        """The parsed description (parsed on first use if vLLM did not call
        :meth:`maybe_update_config`)."""
        if self._description is None:
            if self._pending is None:
                raise DescriptionError(
                    f"{DESCRIPTION_FILE}: not loaded; the model directory was never given "
                    "(vLLM calls maybe_update_config with it)")
            self._description = parse_description(self._pending, DESCRIPTION_FILE)
            self._pending = None
        return self._description

    # ------------------------------------------------------------------ per-layer methods

    def get_quant_method(self, layer: torch.nn.Module, prefix: str
                         ) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.attention import Attention, MLAAttention
        from vllm.model_executor.layers.fused_moe import RoutedExperts
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            ParallelLMHead,
            VocabParallelEmbedding,
        )

        from vllm_ascend.quantization import wrappers

        desc = self.description
        if isinstance(layer, LinearBase):
            quant_type = desc.quant_type_for(prefix, self.packed_modules_mapping)
            if quant_type == FLOAT:
                return UnquantizedLinearMethod()
            scheme = self._scheme(quant_type, "linear", prefix)
            scheme.bind_checkpoint(desc.shard_prefixes(prefix, self.packed_modules_mapping),
                                   self.files.file_of)
            return wrappers.AscendLinearMethod(scheme)
        if isinstance(layer, RoutedExperts):
            quant_type = desc.expert_quant_type(prefix)
            scheme = None
            if quant_type != FLOAT:
                scheme = self._scheme(quant_type, "moe", prefix)
                scheme.bind_checkpoint((prefix,), self.files.file_of)
            return wrappers.AscendFusedMoEMethod(layer.moe_config, scheme)
        if isinstance(layer, (Attention, MLAAttention)):
            quant_type = desc.attention_quant_type()
            if quant_type is None:
                return None
            return wrappers.AscendKVCacheMethod(self, self._scheme(quant_type, "attention",
                                                                   prefix))
        if isinstance(layer, VocabParallelEmbedding):
            quant_type = desc.weight_type(prefix)
            if quant_type in (None, FLOAT):
                return None
            if not isinstance(layer, ParallelLMHead):
                raise UnsupportedSchemeError(
                    f"{desc.source}: '{prefix}.weight' is {quant_type!r}; quantized input "
                    "embeddings are not supported (accepted: \"FLOAT\")")
            if quant_type not in LM_HEAD_SCHEMES:
                raise UnsupportedSchemeError(
                    f"{desc.source}: '{prefix}.weight' is {quant_type!r}; accepted for the "
                    "lm_head: " + ", ".join(map(repr, (FLOAT, *LM_HEAD_SCHEMES))))
            if layer.num_embeddings_padded != layer.org_vocab_size:
                raise UnsupportedSchemeError(
                    f"{desc.source}: '{prefix}.weight' is {quant_type!r} but the vocabulary "
                    f"({layer.org_vocab_size}) is padded to {layer.num_embeddings_padded}; a "
                    "quantized lm_head needs a vocabulary size that is a multiple of 64")
            scheme = self._scheme(quant_type, "linear", prefix)
            scheme.bind_checkpoint((prefix,), self.files.file_of)
            return wrappers.AscendLMHeadMethod(scheme)
        return None

    def _scheme(self, quant_type: str, layer_type: str, prefix: str):
        scheme_cls = get_scheme_class(quant_type, layer_type)
        return scheme_cls(self._scheme_description(), prefix)

    def _scheme_description(self) -> dict[str, Any]:
        """The raw description object schemes receive (one shared copy)."""
        if self._raw_copy is None:
            self._raw_copy = dict(self.description.raw)
        return self._raw_copy


def read_description(model_name: str, revision: str | None = None) -> Any:
    """The parsed JSON of ``<model>/quant_model_description.json`` (local directory or a
    Hugging Face repo); DescriptionError when absent or not JSON."""
    path = os.path.join(model_name, DESCRIPTION_FILE)
    if os.path.isdir(model_name):
        if not os.path.isfile(path):
            raise DescriptionError(
                f"{path}: not found; quantization 'ascend' needs the description file "
                "ModelSlim writes next to the weights (or drop --quantization for a float "
                "model)")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            raise DescriptionError(f"{path}: cannot be read as JSON: {exc}") from exc
    from vllm.transformers_utils.repo_utils import get_hf_file_to_dict

    try:
        data = get_hf_file_to_dict(DESCRIPTION_FILE, model_name, revision)
    except (OSError, ValueError) as exc:
        raise DescriptionError(f"{model_name}/{DESCRIPTION_FILE}: cannot be read: {exc}") \
            from exc
    if data is None:
        raise DescriptionError(f"{model_name}/{DESCRIPTION_FILE}: not found in the model repo")
    return data
