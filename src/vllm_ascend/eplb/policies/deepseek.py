"""``deepseek``: DeepSeek's EPLB, global variant: greedy replication + balanced packing.

1. Replication: every expert gets one slot; each of the ``R = S - E`` extra slots goes to
   the expert with the highest load per replica (at most ``W`` replicas per expert).
2. Packing: replicas, heaviest per-replica load first, each onto the least-loaded rank that
   still has a free slot and does not already hold that expert (vLLM 0.32's packing can
   put two replicas of one expert on a rank; this one cannot). If every rank with room
   holds it (rare), the replica goes to the least-loaded such rank and a swap repairs it.
3. With ``current``, each rank's experts are permuted within the rank so those it already
   held stay in their old slots (the balance is unchanged; fewer slots move). Ranks are
   not renumbered, so most slots still move on every rebalance.

Cost: O(R * L * E) + O(S * L * W), vectorised over layers (a Python loop of ``R`` and
``S`` numpy steps on ``(L, E)`` / ``(L, W)`` arrays).
"""

from __future__ import annotations

import numpy as np

from vllm_ascend.eplb.policies import register_policy
from vllm_ascend.eplb.policies._common import (
    BLOCKED, check_inputs, keep_slots_in_rank, repair_duplicates, replica_counts)


@register_policy("deepseek")
def deepseek(loads, num_ranks: int, num_slots: int, current=None) -> np.ndarray:
    """Greedy replication + balanced packing, from scratch.

    Args:
        loads: ``(L, E)`` float, tokens per logical expert.
        num_ranks: ``W``.
        num_slots: ``S`` (``S % W == 0``, ``E <= S``, ``S / W <= E``).
        current: ``(L, S)`` int64 or None; only used to keep unchanged experts in their
            slot within a rank (step 3 above).

    Returns:
        ``(L, S)`` int64 placement, slot -> logical expert.
    """
    loads, current = check_inputs(loads, num_ranks, num_slots, current)
    counts = replica_counts(loads, num_slots, max_replicas=num_ranks)
    placement, slot_w = pack(loads, counts, num_ranks)
    repair_duplicates(placement, slot_w, num_ranks)
    if current is not None:
        placement = keep_slots_in_rank(placement, current, num_ranks)
    return placement


def replicas_by_load(loads: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every replica of every expert, heaviest per-replica load first (ties: lower id).

    ``(L, E)`` loads, ``(L, E)`` counts (rows sum to ``S``) -> ``experts (L, S)`` int64 and
    ``weights (L, S)`` float64 (the replica's share of its expert's load).
    """
    num_layers, num_experts = loads.shape
    num_slots = int(counts[0].sum())
    per_replica = loads / counts
    order = np.argsort(-per_replica, axis=1, kind="stable")
    flat = (order + num_experts * np.arange(num_layers)[:, None]).ravel()
    items = np.repeat(flat, counts.ravel()[flat])
    experts = (items % num_experts).reshape(num_layers, num_slots)
    weights = per_replica.ravel()[items].reshape(num_layers, num_slots)
    return experts, weights


def pack(loads: np.ndarray, counts: np.ndarray, num_ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced packing of the replicas onto ranks (step 2 of the module docstring).

    Returns ``placement (L, S)`` int64 and ``slot_w (L, S)`` float64, the load in each slot.
    A rank may hold a duplicate only when no rank with room was free of that expert.
    """
    experts, weights = replicas_by_load(loads, counts)
    num_layers, num_slots = experts.shape
    num_experts = loads.shape[1]
    k = num_slots // num_ranks
    rows = np.arange(num_layers)
    key = np.zeros((num_layers, num_ranks))             # rank load; inf once the rank is full
    filled = np.zeros((num_layers, num_ranks), dtype=np.int64)
    holds = np.zeros((num_layers, num_experts, num_ranks), dtype=bool)
    placement = np.empty((num_layers, num_slots), dtype=np.int64)
    slot_w = np.empty((num_layers, num_slots))
    for j in range(num_slots):
        e, w = experts[:, j], weights[:, j]
        rank = (key + BLOCKED * holds[rows, e]).argmin(axis=1)
        pos = filled[rows, rank]
        slot = rank * k + pos
        placement[rows, slot] = e
        slot_w[rows, slot] = w
        filled[rows, rank] = pos + 1
        key[rows, rank] = np.where(pos + 1 == k, np.inf, key[rows, rank] + w)
        holds[rows, e, rank] = True
    return placement, slot_w
