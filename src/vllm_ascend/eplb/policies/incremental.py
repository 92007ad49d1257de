"""``incremental`` (the default): rebalance by moving as few slots as the balance needs.

Starting from the placement in force (``current``; without one it is ``deepseek``):

1. Replica counts are re-decided from the loads: replicas move from expert to expert,
   starting from the current counts, until the greedy optimum of ``deepseek`` holds (up
   to a ``hysteresis``, so noisy loads do not make counts flap).
2. Every slot whose expert keeps its replica stays where it is. An expert that loses
   replicas gives up those on the most loaded ranks; the freed slots go to the experts
   that gain replicas, heaviest per-replica load first, each onto the least-loaded rank
   with a freed slot that does not already hold the expert.
3. Swap search, in rounds: the ``partners`` most loaded ranks are paired with as many
   least-loaded ones, and each pair makes the one slot swap that leaves its maximum lowest,
   while that lowers the heavy rank by more than ``min_gain`` x the mean rank load and at
   most ``max_moves`` x ``S`` slots of the layer differ from ``current``.

Every step is vectorised over layers. Cost: O(C * L * E) for ``C`` count changes, O(F * L * W) to
place ``F`` freed slots, O(I * L * partners * k^2) for ``I`` swap rounds (``k = S / W``).

Two implementations of steps 1-3: this module's numpy code (the reference) and the C++
function ``eplb_incremental`` (``csrc/eplb_incremental.cpp``, the same algorithm layer by
layer, with the same tie-breaking and summation order), used when its library
``vllm_ascend._eplb`` is built (``vllm_ascend.native``). The numpy code costs 5-12 ms for 58 layers x 256 experts at EP64 (tens of small numpy
calls per swap round); the op well under 1 ms. Which one runs is logged once.
"""

from __future__ import annotations

import numpy as np

from vllm_ascend.eplb.policies import register_policy
from vllm_ascend.logger import logger
from vllm_ascend.eplb.policies._common import (
    BLOCKED, adjust_counts, check_inputs, counts_of, repair_duplicates)
from vllm_ascend.eplb.policies.deepseek import deepseek


@register_policy("incremental")
def incremental(loads, num_ranks: int, num_slots: int, current=None, *,
                max_moves: float = 0.25, min_gain: float = 0.0075, partners: int = 8,
                hysteresis: float = 0.05, native: bool | None = None) -> np.ndarray:
    """Rebalance ``current`` for ``loads`` moving few slots (module docstring).

    Args:
        loads: ``(L, E)`` float, tokens per logical expert.
        num_ranks: ``W``.
        num_slots: ``S`` (``S % W == 0``, ``E <= S``, ``S / W <= E``).
        current: ``(L, S)`` int64 placement in force, or None (-> ``deepseek``).
        max_moves: at most this fraction of a layer's slots move in the swap search (the
            re-decided replica counts may move more).
        min_gain: a swap must lower the peak rank load by this fraction of the mean.
        partners: heavy/light rank pairs balanced per swap round.
        hysteresis: a replica changes expert only when the gainer's share beats the
            loser's by this fraction (counts stop flapping with noisy loads; 0.05 keeps the
            drift rebalances of ``python -m bench eplb`` under 10 % of slots at EP64).
        native: True: the C++ function (error if ``vllm_ascend._eplb`` is not built);
            False: the numpy reference; None: the C++ function when built.

    Returns:
        ``(L, S)`` int64 placement, slot -> logical expert.
    """
    loads, current = check_inputs(loads, num_ranks, num_slots, current)
    if current is None:
        return deepseek(loads, num_ranks, num_slots)
    if not 0 <= max_moves <= 1 or min_gain < 0 or partners < 1 or hysteresis < 0:
        raise ValueError(f"max_moves must be in [0, 1], min_gain >= 0, partners >= 1, "
                         f"hysteresis >= 0; got {max_moves}, {min_gain}, {partners}, "
                         f"{hysteresis}")
    cap = int(max_moves * num_slots)
    fn = _native_op(required=native is True) if native is not False else None
    if fn is not None:
        loads, current = np.ascontiguousarray(loads), np.ascontiguousarray(current)
        out = np.empty_like(current)
        status = fn(loads.ctypes.data, current.ctypes.data, *loads.shape, num_slots, num_ranks,
                    cap, min_gain, partners, hysteresis, MAX_COUNT_STEPS, out.ctypes.data)
        if status:
            raise RuntimeError(f"eplb_incremental failed (status {status}): "
                               + ("bad sizes or expert ids" if status < 0 else
                                  f"layer {status - 1} holds more replicas than ranks"))
        return out
    num_experts = loads.shape[1]
    have = counts_of(current, num_experts)
    target = adjust_counts(loads, have, num_ranks, hysteresis, max_steps=MAX_COUNT_STEPS)
    placement, slot_w = _reassign(loads, current, have, target, num_ranks)
    repair_duplicates(placement, slot_w, num_ranks)
    _swap_search(placement, slot_w, current, num_ranks, cap=cap, min_gain=min_gain,
                 partners=partners)
    return placement


#: Replica-count moves per layer before its counts are re-derived from scratch.
MAX_COUNT_STEPS = 8
_logged = False


def _native_op(required: bool):
    """The C++ ``eplb_incremental`` (``vllm_ascend.native``, which loads it once), or None
    (the numpy reference) when ``vllm_ascend._eplb`` is not built; logged once per process."""
    global _logged
    from vllm_ascend.native import eplb_incremental

    op = eplb_incremental()
    if not _logged:
        _logged = True
        logger.info("EPLB policy 'incremental': %s", "C++ (vllm_ascend._eplb)"
                    if op is not None else "numpy reference (vllm_ascend._eplb is not built)")
    if op is None and required:
        raise RuntimeError("incremental(native=True): vllm_ascend._eplb is not built "
                           "(pip install --no-build-isolation -e .)")
    return op


def _reassign(loads: np.ndarray, current: np.ndarray, have: np.ndarray, target: np.ndarray,
              num_ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2: keep slots, give freed ones to the experts that gain replicas.

    ``loads (L, E)``, ``current (L, S)``, its counts ``have (L, E)`` and the ``target (L, E)``
    counts -> ``placement (L, S)``
    and ``slot_w (L, S)`` (each slot's ``loads / target`` share). Only the few slots whose
    expert changes its count are touched.
    """
    num_layers, num_slots = current.shape
    num_experts = loads.shape[1]
    k = num_slots // num_ranks
    rank_of = np.arange(num_slots) // k
    per_replica = loads / target
    surplus = have - target                       # > 0: loses replicas, < 0: gains
    placement = current.copy()
    slot_w = np.take_along_axis(per_replica, current, axis=1)
    cl, cs = np.nonzero(np.take_along_axis(surplus, current, axis=1) > 0)
    if cl.size == 0:
        return placement, slot_w

    # Losers give up the replicas on their most loaded ranks (loads as they are now).
    now_rank = np.take_along_axis(loads / have, current, axis=1) \
        .reshape(num_layers, num_ranks, k).sum(axis=2)
    ce = current[cl, cs]
    order = np.lexsort((-now_rank[cl, rank_of[cs]], ce, cl))
    cl, cs, ce = cl[order], cs[order], ce[order]
    group = cl * num_experts + ce
    first = np.r_[0, np.nonzero(np.diff(group))[0] + 1]
    occurrence = np.arange(group.size) - np.repeat(first, np.diff(np.r_[first, group.size]))
    freed = occurrence < surplus[cl, ce]
    fl, fs = cl[freed], cs[freed]
    placement[fl, fs] = -1
    slot_w[fl, fs] = 0.0
    n_free = np.bincount(fl, minlength=num_layers)

    # Gainers' new replicas, per layer heaviest share first (ties: lower id): (L, max F).
    gl, ge = np.nonzero(surplus < 0)
    order = np.lexsort((-per_replica[gl, ge], gl))
    gl, ge = gl[order], ge[order]
    reps = -surplus[gl, ge]
    il, ie = np.repeat(gl, reps), np.repeat(ge, reps)
    offsets = np.cumsum(n_free) - n_free
    item_e = np.full((num_layers, int(n_free.max())), -1, dtype=np.int64)
    item_e[il, np.arange(il.size) - offsets[il]] = ie

    p3 = placement.reshape(num_layers, num_ranks, k)
    room = np.bincount(fl * num_ranks + rank_of[fs], minlength=num_layers * num_ranks) \
        .reshape(num_layers, num_ranks)
    key = np.where(room > 0, slot_w.reshape(num_layers, num_ranks, k).sum(axis=2), np.inf)
    holds = None
    if item_e.shape[1] > 4:                       # many to place: a lookup table pays off
        holds = np.zeros((num_layers, num_experts, num_ranks), dtype=bool)
        kl, ks = np.nonzero(placement >= 0)
        holds[kl, placement[kl, ks], rank_of[ks]] = True
    for j in range(item_e.shape[1]):
        a = np.nonzero(n_free > j)[0]
        e = item_e[a, j]
        w = per_replica[a, e]
        blocked = holds[a, e] if holds is not None else (p3[a] == e[:, None, None]).any(axis=2)
        rank = (key[a] + BLOCKED * blocked).argmin(axis=1)
        pos = (p3[a, rank] == -1).argmax(axis=1)
        p3[a, rank, pos] = e
        slot_w[a, rank * k + pos] = w
        left = room[a, rank] - 1
        room[a, rank] = left
        key[a, rank] = np.where(left == 0, np.inf, key[a, rank] + w)
        if holds is not None:
            holds[a, e, rank] = True
    return placement, slot_w


def _swap_search(placement: np.ndarray, slot_w: np.ndarray, current: np.ndarray,
                 num_ranks: int, *, cap: int, min_gain: float, partners: int) -> None:
    """Step 3, in place on ``placement`` / ``slot_w`` (both ``(L, S)``).

    Each round pairs the ``P = partners`` most loaded ranks with the ``P`` least loaded
    (``i``-th heaviest with ``i``-th lightest) and makes, per pair, the one swap that leaves
    the pair's maximum lowest, if it lowers the heavy rank by more than ``min_gain`` x the
    mean and the heavy rank is the layer's peak or above ``1 + 2 min_gain`` x the mean
    (ranks already near the mean are not churned). Pairs are disjoint, so a round's swaps
    are independent. A layer stops when no pair gains or its ``cap`` of moved slots is
    reached, or its peak is within ``1 + 2 min_gain`` of the mean.
    """
    num_layers, num_slots = placement.shape
    k = num_slots // num_ranks
    pairs = min(partners, num_ranks // 2)
    if pairs < 1 or cap < 2:
        return
    p3 = placement.reshape(num_layers, num_ranks, k)
    w3 = slot_w.reshape(num_layers, num_ranks, k)
    c3 = current.reshape(num_layers, num_ranks, k)
    rank_load = w3.sum(axis=2)
    mean = rank_load.mean(axis=1)
    tol = min_gain * mean
    busy = (1 + 2 * min_gain) * mean
    moved = (placement != current).sum(axis=1)
    active = np.nonzero((moved <= cap - 2) & (rank_load.max(axis=1) > busy))[0]
    first = np.arange(pairs) == 0
    for _ in range(cap):
        if active.size == 0:
            break
        a = active
        n = a.size
        rl = rank_load[a]
        order = np.argsort(rl, axis=1, kind="stable")
        heavy, light = order[:, :-pairs - 1:-1], order[:, :pairs]          # (n, P) each
        ar = np.arange(n)[:, None]
        lh, ll = rl[ar, heavy], rl[ar, light]
        rows = a[:, None]
        eh, wh = p3[rows, heavy], w3[rows, heavy]                           # (n, P, k)
        el, wl = p3[rows, light], w3[rows, light]
        d = wh[:, :, :, None] - wl[:, :, None, :]                           # (n, P, k, k)
        hi = np.maximum(lh[:, :, None, None] - d, ll[:, :, None, None] + d)
        l_has_h = (eh[:, :, :, None] == el[:, :, None, :]).any(axis=3)      # (n, P, k)
        h_has_l = (el[:, :, :, None] == eh[:, :, None, :]).any(axis=3)      # (n, P, k)
        bad = (d <= 0) | l_has_h[:, :, :, None] | h_has_l[:, :, None, :]
        flat = np.where(bad, np.inf, hi).reshape(n, pairs, k * k)
        best = flat.argmin(axis=2)                                          # (n, P)
        gain = lh - flat[ar, np.arange(pairs), best]
        ok = (gain > tol[a, None]) & (first | (lh > busy[a, None]))
        ok &= moved[a, None] + 2 * np.cumsum(ok, axis=1) <= cap
        if not ok.any():
            break
        li, pi = np.nonzero(ok)
        b = a[li]
        i, j = best[li, pi] // k, best[li, pi] % k
        r1, r2 = heavy[li, pi], light[li, pi]
        e1, e2 = p3[b, r1, i], p3[b, r2, j]
        w1, w2 = w3[b, r1, i], w3[b, r2, j]
        p3[b, r1, i], p3[b, r2, j] = e2, e1
        w3[b, r1, i], w3[b, r2, j] = w2, w1
        rank_load[b, r1] += w2 - w1
        rank_load[b, r2] += w1 - w2
        change = ((e2 != c3[b, r1, i]).astype(np.int64) - (e1 != c3[b, r1, i])
                  + (e1 != c3[b, r2, j]) - (e2 != c3[b, r2, j]))
        moved[a] += np.bincount(li, weights=change, minlength=n).astype(np.int64)
        keep = a[ok.any(axis=1)]
        active = keep[(moved[keep] <= cap - 2) & (rank_load[keep].max(axis=1) > busy[keep])]
