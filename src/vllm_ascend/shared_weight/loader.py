"""The model loader used when ``layer_sharding`` is active (vLLM's ``register_model_loader``).

The platform points ``load_config.load_format`` at :data:`LOAD_FORMAT` (only from ``auto``
or ``safetensors``); the loader is vLLM's ``DefaultModelLoader`` plus three steps:

- before the weights load: create the sharding group (all ranks of the world together)
  and :func:`~vllm_ascend.shared_weight.sharding.plan_sharding`;
- while they load: safetensors files are opened lazily and a tensor of a layer this rank
  does not own is skipped by name before it is read (``.bin`` / ``.pt`` checkpoints cannot be
  read partially: every tensor is read and the non-owned ones dropped, with a warning);
- after vLLM's ``process_weights_after_loading``: ``attach_sharding`` (rings built, first
  broadcasts started).

``LOAD_FORMAT`` only selects this class: vLLM's file discovery (``_prepare_weights``) knows
its own formats alone, so the loader keeps a copy of the load config with ``auto`` (which
finds safetensors first, then ``.bin``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Generator

import torch
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from vllm_ascend.logger import logger

LOAD_FORMAT = "ascend_layer_sharding"
#: load formats the sharding loader replaces (it reads safetensors, or .bin as a fallback)
REPLACEABLE = ("auto", "safetensors")


class LayerShardingLoader(DefaultModelLoader):
    plan = None  # vllm_ascend.shared_weight.sharding.ShardingPlan, set while loading

    def __init__(self, load_config) -> None:
        super().__init__(load_config)
        # vLLM's file discovery raises on a load format it does not know (ours)
        self.load_config = dataclasses.replace(load_config, load_format="auto")

    def load_model(self, vllm_config, model_config, prefix: str = ""):
        from vllm_ascend.shared_weight.config import layer_sharding_from

        self._cfg = layer_sharding_from(vllm_config.additional_config)
        model = super().load_model(vllm_config, model_config, prefix)
        from vllm_ascend.shared_weight.sharding import attach_sharding

        attach_sharding(self.plan)
        return model

    def load_weights(self, model: torch.nn.Module, model_config) -> None:
        from vllm.platforms import current_platform

        from vllm_ascend.shared_weight.group import dp_sharding_group
        from vllm_ascend.shared_weight.sharding import plan_sharding

        group = dp_sharding_group(current_platform.dist_backend)
        self.plan = plan_sharding(model, self._cfg, group)
        self._skipped = [0, 0]
        super().load_weights(model, model_config)
        count, nbytes = self._skipped
        logger.info("layer_sharding: group rank %d/%d did not read %d tensor(s) (%.2f MiB) of "
                    "the layers other ranks own", group.rank, group.size, count, nbytes / 2**20)

    def _get_weights_iterator(self, source) -> Generator[tuple[str, torch.Tensor], None, None]:
        plan = self.plan
        if plan is None or not plan.skip_prefixes:
            yield from super()._get_weights_iterator(source)
            return
        _, files, use_safetensors, _ = self._prepare_weights(
            source.model_or_path, source.subfolder, source.revision, source.fall_back_to_pt,
            source.allow_patterns_overrides)
        if not use_safetensors:
            logger.warning("layer_sharding: the checkpoint is not safetensors: every tensor is "
                           "read, then the non-owned layers' are dropped")
            for name, t in super()._get_weights_iterator(source):
                if not plan.skips(name):
                    yield name, t
            return
        yield from self._filtered_safetensors(files, source.prefix, plan)

    def _filtered_safetensors(self, files, prefix: str, plan):
        from safetensors import safe_open
        from vllm.model_executor.model_loader.ep_weight_filter import should_skip_weight

        if self.counter_before_loading_weights == 0.0:
            self.counter_before_loading_weights = time.perf_counter()
        local_experts = getattr(self, "local_expert_ids", None)
        for path in sorted(files):
            with safe_open(path, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    full = prefix + name
                    if plan.skips(full):
                        sl = f.get_slice(name)  # header only: shape and dtype, no data
                        n = 1
                        for d in sl.get_shape():
                            n *= d
                        self._skipped[0] += 1
                        self._skipped[1] += n * _itemsize(sl.get_dtype())
                        continue
                    if should_skip_weight(name, local_experts):
                        continue
                    yield full, f.get_tensor(name)


_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _itemsize(st_dtype: str) -> int:
    return _ST_SIZES.get(st_dtype, 1)


@functools.cache
def register_loader() -> None:
    """Register :class:`LayerShardingLoader` under :data:`LOAD_FORMAT` (once per process)."""
    from vllm.model_executor.model_loader import register_model_loader

    register_model_loader(LOAD_FORMAT)(LayerShardingLoader)
