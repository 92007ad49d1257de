"""The load a rebalance plans for, from the window of per-step loads.

``window`` (vLLM's choice): the window's sum. ``trend``: per expert, the least-squares line
through the window's recorded steps, evaluated ``horizon`` steps after the last one and
scaled to the window's length, clipped at 0 (the default). Under drifting popularity the
window's sum describes where the load *was* (its centre lies ``window / 2`` steps back);
the placement serves where it *goes* (``python -m bench eplb`` numbers: docs/eplb.md,
"Load estimate").

Both estimates are linear in the per-step loads, ``estimate = sum_i c_i x_i`` (clip aside),
so every EP rank weighs its own rows and one all-gather sums the ranks, as for the plain sum.
"""

from __future__ import annotations

import numpy as np

#: Accepted values of ``load_estimate``.
ESTIMATES = ("trend", "window")


def horizon_for(step_interval: int) -> float:
    """Steps past the window the ``trend`` aims at: a quarter of the interval (the placement
    lands layer by layer soon after the plan and serves the interval; a quarter balanced
    forecast gain against extrapolation noise best in ``bench eplb``)."""
    return step_interval / 4


def window_weights(ages: np.ndarray, estimate: str, horizon: float) -> np.ndarray:
    """Weights ``c`` of the recorded rows: ``estimate = sum_i c_i x_i``.

    Args:
        ages: ``(n,)`` steps between each recorded row and the last one (0 = the last).
        estimate: ``"window"`` (all ones) or ``"trend"``.
        horizon: for ``trend``, steps after the last row the line is evaluated at.

    Returns:
        ``(n,)`` float64; ``trend`` with fewer than two distinct steps is the plain sum.
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"load estimate {estimate!r}: accepted values: {', '.join(ESTIMATES)}")
    t = -np.asarray(ages, dtype=np.float64)          # time of each row, 0 = the last
    ones = np.ones_like(t)
    if estimate == "window" or t.size < 2:
        return ones
    centred = t - t.mean()
    spread = float((centred ** 2).sum())
    if spread == 0.0:
        return ones
    # n * (mean + slope * (horizon - t_mean)), slope = sum(centred * x) / spread
    return ones + t.size * (horizon - t.mean()) * centred / spread


def estimate_loads(window: np.ndarray, estimate: str, horizon: float) -> np.ndarray:
    """``(n, ...)`` per-step loads, oldest first -> ``(...)`` float64 estimate, clipped at 0."""
    window = np.asarray(window, dtype=np.float64)
    c = window_weights(np.arange(window.shape[0])[::-1], estimate, horizon)
    return np.maximum(np.tensordot(c, window, axes=1), 0.0)
