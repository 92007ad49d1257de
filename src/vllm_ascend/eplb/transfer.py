"""Transfer plans: which expert weights move where when one layer's placement changes.

For every slot whose expert changes between ``old`` and ``new`` (both ``(S,)`` for one
layer), the plan names a source: a slot that holds that expert in ``old``, on the
destination's own rank when it has one (a local copy), else on the rank holding it that
has been given the fewest sends so far (ties: lowest rank), so sends spread over ranks.

Sources refer to the *old* placement: the runtime must read every source before it
overwrites any destination (e.g. receive into staging buffers, then copy in). Pure numpy;
the runtime turns the per-rank lists into ``batch_isend_irecv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerTransferPlan:
    """One layer's moves, one entry per destination slot whose expert changes.

    Attributes (all ``(N,)`` int64, ordered by ``dst_slot``):
        dst_slot: physical slot to fill (global slot id).
        expert: logical expert that goes there.
        src_rank: rank that holds ``expert`` in the old placement.
        src_slot: a global slot on ``src_rank`` holding ``expert`` in the old placement.
    And ``num_ranks`` / ``slots_per_rank`` to turn slot ids into (rank, local slot).
    """

    num_ranks: int
    slots_per_rank: int
    dst_slot: np.ndarray
    expert: np.ndarray
    src_rank: np.ndarray
    src_slot: np.ndarray

    @property
    def dst_rank(self) -> np.ndarray:
        """``(N,)`` rank owning each destination slot."""
        return self.dst_slot // self.slots_per_rank

    @property
    def local(self) -> np.ndarray:
        """``(N,)`` bool: the source is on the destination's rank (no communication)."""
        return self.src_rank == self.dst_rank

    def __len__(self) -> int:
        return int(self.dst_slot.size)

    def sends(self, rank: int) -> list[tuple[int, int, int]]:
        """What ``rank`` sends: ``(to rank, from local slot, expert)`` per remote move."""
        sel = (self.src_rank == rank) & ~self.local
        return [(int(d), int(s) % self.slots_per_rank, int(e)) for d, s, e in
                zip(self.dst_rank[sel], self.src_slot[sel], self.expert[sel])]

    def receives(self, rank: int) -> list[tuple[int, int, int]]:
        """What ``rank`` receives: ``(into local slot, from rank, expert)`` per remote move."""
        sel = (self.dst_rank == rank) & ~self.local
        return [(int(d) % self.slots_per_rank, int(s), int(e)) for d, s, e in
                zip(self.dst_slot[sel], self.src_rank[sel], self.expert[sel])]

    def local_copies(self, rank: int) -> list[tuple[int, int, int]]:
        """Moves within ``rank``: ``(into local slot, from local slot, expert)``."""
        sel = (self.dst_rank == rank) & self.local
        return [(int(d) % self.slots_per_rank, int(s) % self.slots_per_rank, int(e))
                for d, s, e in zip(self.dst_slot[sel], self.src_slot[sel], self.expert[sel])]

    def apply(self, old: np.ndarray) -> np.ndarray:
        """The placement after the moves (reading sources from ``old``): ``(S,)`` -> ``(S,)``."""
        out = np.array(old, dtype=np.int64, copy=True)
        out[self.dst_slot] = np.asarray(old)[self.src_slot]
        return out


def slots_moved(old: np.ndarray, new: np.ndarray) -> np.ndarray | int:
    """Slots whose expert changes: ``(S,)`` -> int, ``(L, S)`` -> ``(L,)`` int64."""
    old, new = np.asarray(old), np.asarray(new)
    if old.shape != new.shape:
        raise ValueError(f"old and new placements differ in shape: {old.shape} vs {new.shape}")
    diff = (old != new).sum(axis=-1)
    return int(diff) if old.ndim == 1 else diff.astype(np.int64)


def plan_layer(old: np.ndarray, new: np.ndarray, num_ranks: int) -> LayerTransferPlan:
    """The moves that turn ``old`` into ``new`` for one layer (module docstring).

    Args:
        old, new: ``(S,)`` int placements of the layer (``S % num_ranks == 0``); every
            expert of ``new`` must appear in ``old`` (both valid placements).
        num_ranks: ``W``.
    """
    old = np.asarray(old, dtype=np.int64)
    new = np.asarray(new, dtype=np.int64)
    if old.ndim != 1 or old.shape != new.shape:
        raise ValueError(f"old and new must be (num_slots,) of one shape, got {old.shape}, "
                         f"{new.shape}")
    if old.size % num_ranks:
        raise ValueError(f"num_slots {old.size} is not a multiple of num_ranks {num_ranks}")
    k = old.size // num_ranks
    dst = np.nonzero(old != new)[0]
    expert = new[dst]
    src_rank = np.empty_like(dst)
    src_slot = np.empty_like(dst)
    sent = np.zeros(num_ranks, dtype=np.int64)
    holders: dict[int, np.ndarray] = {}
    for i, (d, e) in enumerate(zip(dst.tolist(), expert.tolist())):
        slots = holders.get(e)
        if slots is None:
            slots = holders[e] = np.nonzero(old == e)[0]
            if slots.size == 0:
                raise ValueError(f"expert {e} (new slot {d}) is held by no slot of old")
        ranks = slots // k
        here = np.nonzero(ranks == d // k)[0]
        if here.size:
            pick = int(here[0])
        else:
            pick = int(np.argmin(sent[ranks]))               # first minimum: lowest rank
            sent[ranks[pick]] += 1
        src_rank[i], src_slot[i] = ranks[pick], slots[pick]
    return LayerTransferPlan(num_ranks, k, dst, expert, src_rank, src_slot)


def plan_transfers(old: np.ndarray, new: np.ndarray, num_ranks: int) -> list[LayerTransferPlan]:
    """:func:`plan_layer` for every layer: ``(L, S)``, ``(L, S)`` -> ``L`` plans."""
    old, new = np.asarray(old), np.asarray(new)
    if old.ndim != 2 or old.shape != new.shape:
        raise ValueError(f"old and new must be (L, S) of one shape, got {old.shape}, {new.shape}")
    return [plan_layer(o, n, num_ranks) for o, n in zip(old, new)]
