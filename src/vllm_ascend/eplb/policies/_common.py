"""Building blocks shared by the policies: input checks, replica counts, the rank-holds
table, duplicate repair and slot-preserving permutation. Pure numpy, vectorised over layers.

Shapes: ``L`` layers, ``E`` experts, ``W`` ranks, ``S`` slots, ``k = S // W`` slots per rank.
"""

from __future__ import annotations

import numpy as np

from vllm_ascend.eplb.placement import check_placement, has_rank_duplicates

#: Added to a rank's key to block it without making it "full" (``inf``): a blocked rank is
#: only chosen when every rank with room is blocked; the duplicate is repaired afterwards.
BLOCKED = 1e300


def check_inputs(loads, num_ranks: int, num_slots: int, current=None):
    """Validate a policy's arguments -> ``(loads (L, E) float64, current (L, S) int64 | None)``.

    Raises ``ValueError`` naming the argument, its value and what is accepted.
    """
    loads = np.asarray(loads, dtype=np.float64)
    if loads.ndim != 2 or loads.shape[1] < 1:
        raise ValueError(f"loads must be (num_layers, num_experts), got shape {loads.shape}")
    if not np.all(np.isfinite(loads)) or (loads < 0).any():
        raise ValueError("loads must be finite and >= 0")
    num_experts = loads.shape[1]
    if not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise ValueError(f"num_ranks must be an integer >= 1, got {num_ranks!r}")
    if not isinstance(num_slots, (int, np.integer)) or num_slots < num_experts \
            or num_slots % num_ranks:
        raise ValueError(f"num_slots must be a multiple of num_ranks ({num_ranks}) and >= "
                         f"num_experts ({num_experts}), got {num_slots!r}")
    if num_slots // num_ranks > num_experts:
        raise ValueError(f"num_slots / num_ranks = {num_slots // num_ranks} slots per rank "
                         f"exceeds num_experts ({num_experts}): a rank would hold duplicates")
    if current is not None:
        current = np.asarray(current)
        if current.shape != (loads.shape[0], num_slots):
            raise ValueError(f"current must be (num_layers, num_slots) = "
                             f"{(loads.shape[0], num_slots)}, got shape {current.shape}")
        check_placement(current.astype(np.int64, copy=False), num_experts, num_ranks,
                        num_slots=num_slots)
        current = current.astype(np.int64, copy=False)
    return loads, current


def replica_counts(loads: np.ndarray, num_slots: int, max_replicas: int) -> np.ndarray:
    """Greedy replication: each extra slot goes to the expert with the highest load per
    replica (ties: lowest expert id), no expert above ``max_replicas``.

    ``(L, E)`` float64 -> ``(L, E)`` int64 counts, each row summing to ``num_slots``.
    O(R * L * E) for ``R = num_slots - E`` extra slots.
    """
    num_layers, num_experts = loads.shape
    counts = np.ones((num_layers, num_experts), dtype=np.int64)
    rows = np.arange(num_layers)
    ratio = loads.copy()
    if max_replicas <= 1:
        ratio[:] = -np.inf
    for _ in range(num_slots - num_experts):
        pick = ratio.argmax(axis=1)
        c = counts[rows, pick] + 1
        counts[rows, pick] = c
        ratio[rows, pick] = np.where(c >= max_replicas, -np.inf, loads[rows, pick] / c)
    return counts


def counts_of(placement: np.ndarray, num_experts: int) -> np.ndarray:
    """Replicas per expert: ``(L, S)`` -> ``(L, E)`` int64."""
    num_layers, num_slots = placement.shape
    flat = (placement + num_experts * np.arange(num_layers)[:, None]).ravel()
    return np.bincount(flat, minlength=num_layers * num_experts).reshape(num_layers, num_experts)


def holds_table(placement: np.ndarray, num_experts: int, num_ranks: int) -> np.ndarray:
    """``holds[l, e, r]``: rank ``r`` holds expert ``e`` in layer ``l``.

    ``(L, S)`` placement -> ``(L, E, W)`` bool.
    """
    num_layers, num_slots = placement.shape
    holds = np.zeros((num_layers, num_experts, num_ranks), dtype=bool)
    rank = np.arange(num_slots) // (num_slots // num_ranks)
    holds[np.arange(num_layers)[:, None], placement, rank[None, :]] = True
    return holds


def duplicate_layers(placement: np.ndarray, num_ranks: int) -> np.ndarray:
    """Indices of layers where some rank holds an expert twice: ``(L, S)`` -> ``(n,)``."""
    return np.nonzero(has_rank_duplicates(placement, num_ranks))[0]


def repair_duplicates(placement: np.ndarray, slot_w: np.ndarray, num_ranks: int) -> None:
    """Swap slots (in place) until no rank holds two replicas of one expert.

    For each extra copy of expert ``e`` on rank ``r``, swap it with the slot on another
    rank ``q`` (``q`` not holding ``e``, its expert not on ``r``) that keeps
    ``max(load r, load q)`` smallest. Always possible when no expert has more than ``W``
    replicas. The rare path: a Python loop over the affected layers only.

    Args:
        placement: ``(L, S)`` int64, modified in place.
        slot_w: ``(L, S)`` float64 load of each slot, permuted along with ``placement``.
        num_ranks: ``W``.
    """
    num_layers, num_slots = placement.shape
    k = num_slots // num_ranks
    rank_of = np.arange(num_slots) // k
    for layer in duplicate_layers(placement, num_ranks):
        p, w = placement[layer], slot_w[layer]
        while True:
            ranks = p.reshape(num_ranks, k)
            srt = np.sort(ranks, axis=1)
            hit = np.nonzero(srt[:, 1:] == srt[:, :-1])
            if hit[0].size == 0:
                break
            r = int(hit[0][0])
            e = int(srt[r, hit[1][0]])
            s = int(np.nonzero(ranks[r] == e)[0][-1]) + r * k
            load = w.reshape(num_ranks, k).sum(axis=1)
            on_r = np.isin(p, ranks[r])
            holds_e = np.isin(np.arange(num_ranks), rank_of[p == e])
            ok = ~holds_e[rank_of] & ~on_r
            if not ok.any():
                raise RuntimeError(f"cannot repair duplicate expert {e} on rank {r}: more "
                                   f"replicas than ranks")
            cost = np.maximum(load[r] - w[s] + w, load[rank_of] - w + w[s])
            t = int(np.argmin(np.where(ok, cost, np.inf)))
            p[s], p[t] = p[t], p[s]
            w[s], w[t] = w[t], w[s]


def keep_slots_in_rank(new: np.ndarray, current: np.ndarray, num_ranks: int) -> np.ndarray:
    """Permute ``new`` within each rank so an expert the rank held in ``current`` stays in
    its old slot; the rank's other experts fill its remaining slots in their order.

    ``(L, S)``, ``(L, S)`` (both without duplicates on a rank) -> ``(L, S)``; the set of
    experts on every rank is unchanged.
    """
    num_layers, num_slots = new.shape
    k = num_slots // num_ranks
    nw = new.reshape(num_layers, num_ranks, k)
    cur = current.reshape(num_layers, num_ranks, k)
    eq = nw[:, :, :, None] == cur[:, :, None, :]            # (L, W, k new, k old)
    new_kept = eq.any(axis=3)
    slot_kept = eq.any(axis=2)
    incoming = np.take_along_axis(nw, np.argsort(new_kept, axis=2, kind="stable"), axis=2)
    free = np.argsort(slot_kept, axis=2, kind="stable")     # free slots first, in order
    n_in = (~new_kept).sum(axis=2, keepdims=True)
    out = cur.copy()
    fill = np.where(np.arange(k) < n_in, incoming, np.take_along_axis(cur, free, axis=2))
    np.put_along_axis(out, free, fill, axis=2)
    return out.reshape(num_layers, num_slots)


def adjust_counts(loads: np.ndarray, have: np.ndarray, max_replicas: int,
                  hysteresis: float = 0.0, max_steps: int | None = None) -> np.ndarray:
    """Move replicas between experts, starting from ``have``, until greedy replication's
    optimum holds: no expert ``g`` whose next replica's share ``w_g / c_g`` beats (by more
    than ``hysteresis``, relative) the share ``w_l / (c_l - 1)`` expert ``l`` would have
    after giving one up. With ``hysteresis=0`` this is :func:`replica_counts`'s answer (up to
    ties) in as many steps as replicas change hands. Layers still changing after
    ``max_steps`` moves (a workload switch) get :func:`replica_counts` from scratch.

    ``(L, E)`` float64 loads, ``(L, E)`` int64 counts -> ``(L, E)`` int64 counts (same sums).
    """
    num_layers, num_experts = loads.shape
    counts = have.copy()
    rows = np.arange(num_layers)
    with np.errstate(divide="ignore", invalid="ignore"):
        give = np.where(counts < max_replicas, loads / counts, -np.inf)   # next replica's share
        take = np.where(counts > 1, loads / (counts - 1), np.inf)         # share after losing one
    factor = 1.0 + hysteresis
    steps = int(counts.sum(axis=1).max()) if max_steps is None else max_steps
    for _ in range(steps + 1):
        g = give.argmax(axis=1)
        t = take.argmin(axis=1)
        a = np.nonzero(give[rows, g] > factor * take[rows, t])[0]
        if a.size == 0:
            return counts
        if _ == steps:
            break
        for e, step in ((g[a], 1), (t[a], -1)):
            c = counts[a, e] + step
            counts[a, e] = c
            give[a, e] = np.where(c < max_replicas, loads[a, e] / c, -np.inf)
            take[a, e] = np.where(c > 1, loads[a, e] / np.maximum(c - 1, 1), np.inf)
    counts[a] = replica_counts(loads[a], int(have[0].sum()), max_replicas)
    return counts
