"""The placement guard, and the maps the runtime derives from a placement.

A placement is ``(L, S)`` int64, physical slot -> logical expert id, slots rank-major (rank
``r`` owns slots ``[r * S // W, (r + 1) * S // W)``). It is valid for ``E`` experts and ``W``
ranks when every layer has exactly ``S`` entries, ``S % W == 0`` and ``S >= E``, every entry
is in ``[0, E)``, every expert appears at least once, and no rank holds two replicas of one
expert.

- :func:`validate_placement` lists the problems, :func:`check_placement` raises them;
- :func:`logical_to_replicas`: expert -> its physical slots (padded ``(L, E, M)`` table);
- :func:`choose_replica` (torch, runs in the forward): token's expert -> one physical slot.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: How many problems a message lists before "... and N more".
_MAX_LISTED = 8


class PlacementError(ValueError):
    """A placement breaks an invariant; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], what: str = "placement") -> None:
        self.problems = list(problems)
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"invalid {what}:\n  " + "\n  ".join(shown) + tail)


def round_robin_placement(num_layers: int, num_experts: int, num_ranks: int) -> np.ndarray:
    """No EPLB: ``S = E`` slots, expert ``e`` in slot ``e`` (rank ``e // (E / W)``).

    Returns ``(L, E)`` int64. Requires ``E % W == 0``.
    """
    if num_experts % num_ranks:
        raise ValueError(f"num_experts {num_experts} is not a multiple of num_ranks {num_ranks}")
    return np.tile(np.arange(num_experts, dtype=np.int64), (num_layers, 1))


def validate_placement(
    placement: np.ndarray | Sequence[Sequence[int]],
    num_experts: int,
    num_ranks: int,
    *,
    num_slots: int | None = None,
    layer_ids: Sequence | None = None,
) -> list[str]:
    """Every invariant a placement breaks, one line each; empty when valid.

    Args:
        placement: ``(L, S)`` ints, or ``L`` rows (rows of different lengths are reported).
            A single ``(S,)`` row is one layer.
        num_experts: ``E``.
        num_ranks: ``W``.
        num_slots: expected ``S``; default: the first row's length.
        layer_ids: names of the layers in messages (default ``0 .. L-1``).

    Returns:
        Lines like ``"layer 3: rank 2 holds expert 17 twice (slots 10, 11)"``.
    """
    rows = _rows(placement)
    if layer_ids is None:
        layer_ids = range(len(rows))
    layer_ids = list(layer_ids)
    if len(layer_ids) != len(rows):
        raise ValueError(f"layer_ids has {len(layer_ids)} names for {len(rows)} layers")
    if num_experts < 1 or num_ranks < 1:
        return [f"num_experts ({num_experts}) and num_ranks ({num_ranks}) must be >= 1"]
    problems: list[str] = []
    expected = num_slots if num_slots is not None else (len(rows[0]) if rows else 0)
    if expected % num_ranks or expected < num_experts:
        problems.append(
            f"slot count {expected} must be a multiple of num_ranks {num_ranks} and "
            f">= num_experts {num_experts}")
        return problems
    per_rank = expected // num_ranks
    if isinstance(placement, np.ndarray) and placement.ndim == 2 and \
            np.issubdtype(placement.dtype, np.integer) and placement.shape[1] == expected:
        suspect = np.nonzero(_suspect_layers(placement, num_experts, num_ranks))[0]
        rows, layer_ids = [rows[i] for i in suspect], [layer_ids[i] for i in suspect]
    for name, row in zip(layer_ids, rows):
        problems += _row_problems(f"layer {name}", row, num_experts, num_ranks, expected,
                                  per_rank)
    return problems


def check_placement(
    placement: np.ndarray | Sequence[Sequence[int]],
    num_experts: int,
    num_ranks: int,
    *,
    num_slots: int | None = None,
    layer_ids: Sequence | None = None,
) -> None:
    """:func:`validate_placement`, raising :class:`PlacementError` listing the problems."""
    problems = validate_placement(placement, num_experts, num_ranks, num_slots=num_slots,
                                  layer_ids=layer_ids)
    if problems:
        raise PlacementError(problems)


def _suspect_layers(placement: np.ndarray, num_experts: int, num_ranks: int) -> np.ndarray:
    """Vectorised screen: ``(L, S)`` -> ``(L,)`` bool, True where a layer may be invalid."""
    num_layers, num_slots = placement.shape
    out_of_range = ((placement < 0) | (placement >= num_experts)).any(axis=1)
    flat = (np.clip(placement, 0, num_experts - 1)
            + num_experts * np.arange(num_layers)[:, None]).ravel()
    counts = np.bincount(flat, minlength=num_layers * num_experts)
    lost = (counts.reshape(num_layers, num_experts) == 0).any(axis=1)
    return out_of_range | lost | has_rank_duplicates(placement, num_ranks)


def has_rank_duplicates(placement: np.ndarray, num_ranks: int) -> np.ndarray:
    """``(L, S)`` -> ``(L,)`` bool: some rank of the layer holds one expert twice."""
    num_layers, num_slots = placement.shape
    k = num_slots // num_ranks
    dup = np.zeros(num_layers, dtype=bool)
    for d in range(1, k):            # slots s and s + d share a rank when s % k < k - d
        same_rank = np.arange(num_slots - d) % k < k - d
        dup |= ((placement[:, d:] == placement[:, :-d]) & same_rank).any(axis=1)
    return dup


def _rows(placement) -> list[np.ndarray]:
    if isinstance(placement, np.ndarray):
        if placement.ndim == 1:
            return [placement]
        if placement.ndim != 2:
            raise ValueError(f"placement must be (L, S) or (S,), got shape {placement.shape}")
        return list(placement)
    rows = list(placement)
    if rows and np.ndim(rows[0]) == 0:
        return [np.asarray(rows)]
    return [np.asarray(r) for r in rows]


def _row_problems(where: str, row: np.ndarray, num_experts: int, num_ranks: int,
                  expected: int, per_rank: int) -> list[str]:
    row = np.asarray(row)
    if row.ndim != 1:
        return [f"{where}: expected a flat list of {expected} expert ids, got shape {row.shape}"]
    if row.size and not np.issubdtype(row.dtype, np.integer):
        return [f"{where}: expert ids must be integers, got dtype {row.dtype}"]
    if row.size != expected:
        return [f"{where}: {row.size} slots, expected {expected} "
                f"({num_ranks} ranks x {per_rank})"]
    out: list[str] = []
    bad = np.nonzero((row < 0) | (row >= num_experts))[0]
    for s in bad[:_MAX_LISTED]:
        out.append(f"{where}: slot {s} holds expert id {row[s]}, outside [0, {num_experts})")
    ok = row[(row >= 0) & (row < num_experts)]
    missing = np.setdiff1d(np.arange(num_experts), ok)
    if missing.size:
        listed = ", ".join(map(str, missing[:_MAX_LISTED]))
        more = f" and {missing.size - _MAX_LISTED} more" if missing.size > _MAX_LISTED else ""
        out.append(f"{where}: logical expert(s) {listed}{more} lost (no slot holds them)")
    ranks = row.reshape(num_ranks, per_rank)
    srt = np.sort(ranks, axis=1)
    dup_r, dup_c = np.nonzero(srt[:, 1:] == srt[:, :-1])
    seen = set()
    for r, c in zip(dup_r, dup_c):
        e = int(srt[r, c])
        if (r, e) in seen:
            continue
        seen.add((r, e))
        slots = (np.nonzero(ranks[r] == e)[0] + r * per_rank).tolist()
        out.append(f"{where}: rank {r} holds expert {e} {len(slots)} times "
                   f"(slots {', '.join(map(str, slots))})")
    return out


def logical_to_replicas(placement: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Physical slots of each logical expert.

    Args:
        placement: ``(L, S)`` or one layer ``(S,)`` int, slot -> expert (valid).
        num_experts: ``E``.

    Returns:
        ``replicas``: ``(L, E, M)`` int64 (``(E, M)`` for one layer), the slot ids of each
        expert ascending, padded with -1; ``M`` = the most replicas any expert has.
        ``counts``: ``(L, E)`` int64 (``(E,)``), replicas per expert.
    """
    placement = np.asarray(placement, dtype=np.int64)
    single = placement.ndim == 1
    p = placement[None] if single else placement
    num_layers, num_slots = p.shape
    counts = np.zeros((num_layers, num_experts), dtype=np.int64)
    rows = np.repeat(np.arange(num_layers), num_slots)
    np.add.at(counts, (rows, p.ravel()), 1)
    width = max(int(counts.max(initial=0)), 1)
    order = np.argsort(p, axis=1, kind="stable")          # slots grouped by expert, ascending
    experts = np.take_along_axis(p, order, axis=1)
    starts = np.cumsum(counts, axis=1) - counts              # first position of each expert
    rank_in_expert = np.arange(num_slots)[None, :] - np.take_along_axis(starts, experts, axis=1)
    replicas = np.full((num_layers, num_experts, width), -1, dtype=np.int64)
    replicas[rows, experts.ravel(), rank_in_expert.ravel()] = order.ravel()
    if single:
        return replicas[0], counts[0]
    return replicas, counts


def choose_replica(topk_ids, positions, replicas, counts):
    """Physical slot for each (token, k) routed expert: ``replicas[e, pos % counts[e]]``.

    Deterministic, no host sync and no Python loop: it runs inside the model's forward.

    Args:
        topk_ids: ``(T, K)`` integer torch tensor, logical expert ids.
        positions: ``(T,)`` integer tensor, the token's position (or index) in the batch.
        replicas: ``(E, M)`` int64 tensor from :func:`logical_to_replicas` (one layer).
        counts: ``(E,)`` int64 tensor, replicas per expert (all >= 1).

    Returns:
        ``(T, K)`` int64 physical slot ids, each a slot that holds the token's expert.
    """
    ids = topk_ids.long()
    n = counts[ids]                                          # (T, K)
    which = positions.long().unsqueeze(1) % n                # (T, K)
    return replicas[ids, which]


def choose_replica_np(topk_ids: np.ndarray, positions: np.ndarray, replicas: np.ndarray,
                      counts: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`choose_replica` (same shapes, same result), for tests/tools."""
    ids = np.asarray(topk_ids, dtype=np.int64)
    which = np.asarray(positions, dtype=np.int64)[:, None] % counts[ids]
    return replicas[ids, which]
