"""One MoE layer's physical expert slots on this rank: the expert tensors, the maps, packing.

With ``R`` redundant experts a layer holds ``S = E + R`` physical slots, ``S / W`` on each
of the ``W`` EP ranks (rank ``r`` owns slots ``[r*S/W, (r+1)*S/W)``). Every tensor of the
layer whose name starts with ``w13`` / ``w2`` and whose first dimension is the local expert
count is *per expert*: float weights, or a quantised scheme's weights, scales, offsets and
``scale_bias`` alike. An expert moves as one unit: all its slices packed into one byte
buffer (:meth:`LayerSlots.pack`), unpacked into a slot on arrival (:meth:`unpack_into`).

vLLM loads each rank's ``E / W`` experts linearly (rank ``r`` gets ``[r*E/W, (r+1)*E/W)``)
into the first ``E / W`` local slots; :meth:`LayerSlots.expand` adds the ``R / W`` slots
that the start-up transfer then fills with their experts' checkpoint weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_ascend.eplb.placement import choose_replica, logical_to_replicas

_EXPERT_TENSOR = re.compile(r"^(w13|w2)_")
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def layer_index_of(layer_name: str) -> int:
    """``model.layers.7.mlp.experts`` -> 7 (the placement file's layer key)."""
    m = _LAYER_INDEX.search(f".{layer_name}.")
    if m is None:
        raise ValueError(f"cannot find a decoder layer index in MoE layer name {layer_name!r}")
    return int(m.group(1))


def linear_placement(num_experts: int, num_ranks: int, num_slots: int) -> np.ndarray:
    """``(S,)`` the start-up placement without a placement file.

    Rank ``r``'s first ``E/W`` slots hold the experts vLLM loaded there (``r*E/W + j``);
    its ``R/W`` redundant slots hold the experts after its own block (``(r+1)*E/W + j``,
    wrapping), so no rank holds an expert twice while ``S/W <= E``.
    """
    own, per_rank = num_experts // num_ranks, num_slots // num_ranks
    row = np.empty(num_slots, dtype=np.int64)
    for r in range(num_ranks):
        row[r * per_rank:(r + 1) * per_rank] = (r * own + np.arange(per_rank)) % num_experts
    return row


def loaded_placement(num_experts: int, num_ranks: int, num_slots: int) -> np.ndarray:
    """``(S,)`` what the slots hold right after loading: each rank's linear experts in its
    first ``E/W`` slots, -1 (empty) in the redundant ones."""
    own, per_rank = num_experts // num_ranks, num_slots // num_ranks
    row = np.full(num_slots, -1, dtype=np.int64)
    for r in range(num_ranks):
        row[r * per_rank:r * per_rank + own] = r * own + np.arange(own)
    return row


@dataclass
class LayerSlots:
    """This rank's view of one MoE layer's slots (shapes: ``E`` logical experts, ``S``
    physical slots, ``W`` EP ranks, ``S_l = S / W`` local slots)."""

    name: str                      # vLLM's layer name, e.g. model.layers.3.mlp.experts
    module: torch.nn.Module        # the RoutedExperts holding the expert tensors
    num_experts: int
    num_slots: int
    ep_rank: int
    ep_size: int
    placement: np.ndarray = field(init=False)  # (S,) int64 slot -> logical expert
    replicas: torch.Tensor = field(init=False)  # (E, M) int64 slots of each expert, -1 pad
    counts: torch.Tensor = field(init=False)    # (E,) int64 replicas per expert
    local_logical: torch.Tensor = field(init=False)  # (S_l,) int64 expert of each local slot

    def __post_init__(self) -> None:
        self.layer_index = layer_index_of(self.name)
        self.local_slots = self.num_slots // self.ep_size
        self._tensor_names: list[str] | None = None
        self.set_placement(loaded_placement(self.num_experts, self.ep_size, self.num_slots))

    # -- maps --------------------------------------------------------------------------

    def set_placement(self, row: np.ndarray) -> None:
        """Swap the maps to ``row`` (``(S,)``; -1 = empty slot, only before start-up)."""
        row = np.asarray(row, dtype=np.int64).copy()
        self.placement = row
        replicas, counts = _replicas_skipping_empty(row, self.num_experts)
        self.replicas = torch.from_numpy(replicas)
        self.counts = torch.from_numpy(counts)
        lo = self.ep_rank * self.local_slots
        self.local_logical = torch.from_numpy(row[lo:lo + self.local_slots].clip(min=0))

    def to_physical(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """``(M, K)`` logical expert ids -> physical slot ids: replica ``m % count`` of the
        expert for the token in row ``m`` (deterministic; no host sync)."""
        rows = torch.arange(topk_ids.shape[0], device=topk_ids.device)
        return choose_replica(topk_ids, rows, self.replicas, self.counts).to(topk_ids.dtype)

    # -- tensors -----------------------------------------------------------------------

    def _names_with_rows(self, rows: int) -> list[str]:
        """Names of the module's per-expert tensors (``w13_*`` / ``w2_*``, ``rows`` rows)."""
        names = [n for n, p in sorted(self.module.named_parameters(recurse=False))
                 if _EXPERT_TENSOR.match(n) and p.dim() >= 1 and p.shape[0] == rows]
        if not names:
            raise RuntimeError(f"EPLB: MoE layer {self.name} has no per-expert tensors "
                               f"(w13_* / w2_* with {rows} rows)")
        return names

    def expert_tensors(self) -> dict[str, torch.nn.Parameter]:
        """Name -> per-expert parameter (first dim = local slots), in a fixed order. The
        names are found once; the parameters are looked up live (loaders replace them)."""
        if self._tensor_names is None:
            self._tensor_names = self._names_with_rows(self.local_slots)
        return {n: getattr(self.module, n) for n in self._tensor_names}

    def expand(self) -> None:
        """Grow every per-expert tensor from ``E/W`` to ``S/W`` rows (new rows zero)."""
        from vllm.model_executor.utils import replace_parameter

        own = self.num_experts // self.ep_size
        extra = self.local_slots - own
        if extra == 0:
            return
        names = self._names_with_rows(own)
        for n in names:
            old = getattr(self.module, n).data
            new = torch.zeros((self.local_slots, *old.shape[1:]), dtype=old.dtype,
                              device=old.device)
            new[:own].copy_(old)
            replace_parameter(self.module, n, new)
        self._tensor_names = names

    def expert_nbytes(self) -> int:
        """Bytes of one expert (all its tensors): the size of one transfer."""
        return sum(p[0].numel() * p.element_size() for p in self.expert_tensors().values())

    def pack(self, local_slot: int) -> torch.Tensor:
        """All tensors of local slot ``local_slot`` as one contiguous uint8 buffer (a copy)."""
        parts = [p.data[local_slot].contiguous().reshape(-1).view(torch.uint8)
                 for p in self.expert_tensors().values()]
        return torch.cat(parts)

    def empty_buffer(self) -> torch.Tensor:
        p = next(iter(self.expert_tensors().values()))
        return torch.empty(self.expert_nbytes(), dtype=torch.uint8, device=p.device)

    def unpack_into(self, local_slot: int, buf: torch.Tensor) -> None:
        """Write a buffer from :meth:`pack` into local slot ``local_slot`` (in place).

        The write goes through the parameter itself (a view of it, no autograd), never
        ``.data``: that bumps the parameter's version counter, which the reference backend's
        caches of derived weights (oneDNN int8 handles, A8W4 packs; ``cpu_kernels``) check,
        so the moved expert's packs are rebuilt. A write through ``.data`` leaves the counter
        alone and the GEMMs would keep computing with the slot's previous expert."""
        off = 0
        with torch.no_grad():
            for p in self.expert_tensors().values():
                dst = p[local_slot]
                n = dst.numel() * dst.element_size()
                dst.copy_(buf[off:off + n].view(dst.dtype).view(dst.shape))
                off += n
        if off != buf.numel():
            raise RuntimeError(f"EPLB: {self.name}: a {buf.numel()}-byte expert buffer does "
                               f"not match this layer's {off}-byte experts")


def _replicas_skipping_empty(row: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`logical_to_replicas` for a row with empty (-1) slots: they hold no expert."""
    held = np.nonzero(row >= 0)[0]
    sub_rep, counts = logical_to_replicas(row[held], num_experts)
    replicas = np.where(sub_rep >= 0, held[np.clip(sub_rep, 0, None)], -1)
    return replicas, counts
