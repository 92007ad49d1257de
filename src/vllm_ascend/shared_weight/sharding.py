"""Shard a built model's series over a group: plan before loading, attach after processing.

1. :func:`plan_sharding` (model built, weights not loaded): find and validate the series,
   give every layer a :class:`~vllm_ascend.shared_weight.method.ShardedLinearMethod`, and
   drop the parameters of the layers this rank does not own (all but the resident bias).
   :meth:`ShardingPlan.skips` tells the loader which checkpoint tensors not to read.
2. the loader loads the owned layers and vLLM runs ``process_weights_after_loading``
   (only the owners' methods process).
3. :func:`attach_sharding`: check that the processed form is the same on every layer and
   rank, build each series' ring and the buffers' stand-in modules, register the runtime
   with the custom ops, and start the first ``prefetch_step`` broadcasts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vllm_ascend.logger import logger
from vllm_ascend.shared_weight.config import (
    SECTION,
    LayerShardingConfig,
    LayerShardingConfigError,
    check_series_length,
)
from vllm_ascend.shared_weight.custom_ops import register_runtime
from vllm_ascend.shared_weight.group import ShardingGroup
from vllm_ascend.shared_weight.method import ShardedLinearMethod, apply_inner
from vllm_ascend.shared_weight.ring import SeriesRing, TensorSpec
from vllm_ascend.shared_weight.series import RESIDENT, Series, find_series


@dataclass
class ShardingPlan:
    cfg: LayerShardingConfig
    group: ShardingGroup
    series: list[Series]
    #: qualified names of the modules whose tensors this rank must not read
    skip_prefixes: set[str] = field(default_factory=set)
    runtimes: list["SeriesRuntime"] = field(default_factory=list)

    def skips(self, tensor_name: str) -> bool:
        """True for a checkpoint tensor of a layer this rank does not own."""
        prefix, _, leaf = tensor_name.rpartition(".")
        return prefix in self.skip_prefixes and leaf not in RESIDENT


def _out_features(module: torch.nn.Module) -> int:
    """This rank's output width (``ReplicatedLinear`` has no per-partition size)."""
    return int(getattr(module, "output_size_per_partition", None) or module.output_size)


def plan_sharding(model: torch.nn.Module, cfg: LayerShardingConfig,
                  group: ShardingGroup) -> ShardingPlan:
    """Step 1 (see the module docstring)."""
    plan = ShardingPlan(cfg, group, find_series(model, cfg.layers))
    for s in plan.series:
        check_series_length(cfg, s.suffix, len(s), group.size)
        for i, (name, m) in enumerate(zip(s.names, s.modules)):
            owned = group.owner(i) == group.rank
            m.quant_method = ShardedLinearMethod(m.quant_method, s.suffix, i, owned,
                                                 _out_features(m))
            if not owned:
                for pname in [p for p in m._parameters if p not in RESIDENT]:
                    del m._parameters[pname]
                plan.skip_prefixes.add(name)
    return plan


def processed_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What is broadcast of a processed layer: its parameters and buffers, bias excepted."""
    out = {n: p.data for n, p in module.named_parameters(recurse=False) if n not in RESIDENT}
    out.update((n, b) for n, b in module.named_buffers(recurse=False) if n not in RESIDENT)
    return out


def _specs(name: str, tensors: dict[str, torch.Tensor]) -> list[TensorSpec]:
    for n, t in tensors.items():
        if not t.is_contiguous():
            raise NotImplementedError(
                f"layer_sharding: {name}.{n} is not contiguous after processing "
                f"(shape {tuple(t.shape)}, stride {t.stride()}); it cannot be broadcast as is")
    return [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in sorted(tensors.items())]


def _shadow(template: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A stand-in for any layer of the series: the template's attributes, ``tensors``."""
    shadow = copy.copy(template)
    shadow._parameters, shadow._buffers, shadow._modules = {}, {}, {}
    for n, p in template._parameters.items():
        shadow._parameters[n] = p if n not in tensors else torch.nn.Parameter(
            tensors[n], requires_grad=False)
    for n, b in template._buffers.items():
        shadow._buffers[n] = tensors.get(n, b)
    return shadow


class SeriesRuntime:
    """A series at run time: its ring, and how a layer computes (owner: its own module;
    else: the stand-in module over the buffer its weights arrived in)."""

    def __init__(self, series: Series, ring: SeriesRing, template: torch.nn.Module) -> None:
        from vllm_ascend.device import ops

        self.series, self.ring = series, ring
        self.methods: list[ShardedLinearMethod] = [m.quant_method for m in series.modules]
        self.template_method = template.quant_method.inner
        like = processed_tensors(template)
        for slot in ring.slots:
            for n, t in slot.items():
                ops.npu_format_cast_(t, like[n])  # the device layout (e.g. FRACTAL_NZ)
        self.shadows = [_shadow(template, slot) for slot in ring.slots]
        self.handle = register_runtime(self)
        for method in self.methods:
            method.handle, method.runtime = self.handle, self

    def prefetch(self, layer: int) -> None:
        self.ring.start(self.ring.ahead(layer))

    def compute(self, layer: int, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        slot = self.ring.wait(layer)
        if slot is None:
            return apply_inner(self.methods[layer].inner, self.series.modules[layer], x, bias)
        self.ring.tensors(slot, layer)  # checks the buffer's layer index
        return apply_inner(self.template_method, self.shadows[slot], x, bias)

    def close(self) -> None:
        self.ring.drain()


def attach_sharding(plan: ShardingPlan, device: torch.device | None = None) -> list[SeriesRuntime]:
    """Step 3 (see the module docstring); all ranks of the group call it together."""
    g = plan.group
    for s in plan.series:
        owned = [i for i in range(len(s)) if g.owner(i) == g.rank]
        template = s.modules[owned[0]]
        specs = _specs(s.names[owned[0]], processed_tensors(template))
        own = {}
        for i in owned:
            tensors = processed_tensors(s.modules[i])
            if _specs(s.names[i], tensors) != specs:
                raise LayerShardingConfigError(
                    f"{SECTION}: series {s.suffix!r}: {s.names[i]} processed into "
                    f"{_specs(s.names[i], tensors)}, {s.names[owned[0]]} into {specs}")
            own[i] = tensors
        everyone: list = [None] * g.size
        dist.all_gather_object(everyone, specs, group=g.cpu_group)
        for r, theirs in enumerate(everyone):
            if theirs != specs:
                raise LayerShardingConfigError(
                    f"{SECTION}: series {s.suffix!r}: group rank {r} processed its layers into "
                    f"{theirs}, group rank {g.rank} into {specs}")
        dev = device if device is not None else next(iter(own[owned[0]].values())).device
        ring = SeriesRing(s.suffix, len(s), plan.cfg.prefetch_step, g, own, specs, dev)
        rt = SeriesRuntime(s, ring, template)
        plan.runtimes.append(rt)
        layer_bytes = sum(sp.nbytes for sp in specs)
        logger.info("layer_sharding: series %s: %d layers of %.2f MiB over %d ranks; this "
                    "rank stores %d, ring of %d buffer(s) (prefetch_step %d)", s.suffix, len(s),
                    layer_bytes / 2**20, g.size, len(owned), len(ring.slots),
                    plan.cfg.prefetch_step)
    for rt in plan.runtimes:
        rt.ring.prime()
    return plan.runtimes


def resident_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the distinct storages a model holds, measured from the live tensors:
    ``model`` (parameters + buffers), ``ring`` (the sharded series' buffers), and
    ``series`` (the sharded layers' own parameters + buffers, bias included)."""
    from vllm_ascend.shared_weight.custom_ops import runtime

    def add(seen: dict, tensors) -> None:
        for t in tensors:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    everything, ring, series, handles = {}, {}, {}, set()
    add(everything, list(model.parameters()) + list(model.buffers()))
    for m in model.modules():
        method = getattr(m, "quant_method", None)
        if isinstance(method, ShardedLinearMethod):
            add(series, list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))
            if method.handle is not None:
                handles.add(method.handle)
    for h in handles:
        add(ring, [t for slot in runtime(h).ring.slots for t in slot.values()])
    return {"model": sum(everything.values()), "ring": sum(ring.values()),
            "series": sum(series.values())}
