"""Load of each rank under a placement, and the balancedness of a placement.

An expert's load is split evenly over its replicas (the runtime picks replicas round-robin
by token position, see :func:`vllm_ascend.eplb.placement.choose_replica`).

Balancedness of one layer = mean over ranks / max over ranks of the per-rank load; 1.0 is
perfect, ``1 / W`` is everything on one rank. A layer with no load counts as 1.0.
"""

from __future__ import annotations

import numpy as np


def slot_loads(placement: np.ndarray, loads: np.ndarray) -> np.ndarray:
    """Load carried by each physical slot.

    Args:
        placement: ``(L, S)`` int, slot -> logical expert.
        loads: ``(L, E)`` float, tokens per logical expert.

    Returns:
        ``(L, S)`` float64: ``loads[l, e] / replicas of e in layer l`` for the slot's ``e``.
    """
    placement = np.asarray(placement)
    loads = np.asarray(loads, dtype=np.float64)
    num_layers, num_experts = loads.shape
    flat = (placement + num_experts * np.arange(num_layers)[:, None]).ravel()
    counts = np.bincount(flat, minlength=num_layers * num_experts).reshape(loads.shape)
    per_replica = loads / np.maximum(counts, 1)
    return np.take_along_axis(per_replica, placement, axis=1)


def rank_loads(placement: np.ndarray, loads: np.ndarray, num_ranks: int) -> np.ndarray:
    """Per-rank load: ``(L, S)`` placement, ``(L, E)`` loads -> ``(L, W)`` float64."""
    per_slot = slot_loads(placement, loads)
    num_layers, num_slots = per_slot.shape
    if num_slots % num_ranks:
        raise ValueError(f"num_slots {num_slots} is not a multiple of num_ranks {num_ranks}")
    return per_slot.reshape(num_layers, num_ranks, num_slots // num_ranks).sum(axis=2)


def balancedness(placement: np.ndarray, loads: np.ndarray, num_ranks: int) -> np.ndarray:
    """Mean / max per-rank load of each layer: ``(L, S)``, ``(L, E)`` -> ``(L,)`` in (0, 1]."""
    per_rank = rank_loads(placement, loads, num_ranks)
    peak = per_rank.max(axis=1)
    out = np.ones(per_rank.shape[0])
    busy = peak > 0
    out[busy] = per_rank[busy].mean(axis=1) / peak[busy]
    return out
