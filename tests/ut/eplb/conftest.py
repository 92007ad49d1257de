"""Shared hypothesis strategies for the EPLB tests: (E, W, S) configs and loads."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def configs(draw, max_experts: int = 64):
    """``(num_experts, num_ranks, num_slots)`` with ``S % W == 0``, ``E <= S``, ``S / W <= E``."""
    num_experts = draw(st.integers(4, max_experts))
    num_ranks = draw(st.sampled_from([w for w in (1, 2, 3, 4, 8, 16) if w <= num_experts]))
    low = -(-num_experts // num_ranks)
    per_rank = draw(st.integers(low, min(num_experts, low + 3)))
    return num_experts, num_ranks, per_rank * num_ranks


@st.composite
def loads_for(draw, num_layers: int, num_experts: int):
    """``(L, E)`` float64 loads: skewed, with zeros, sometimes one hot expert or all zero."""
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["gamma", "zeros", "hot", "uniform", "empty"]))
    rng = np.random.default_rng(seed)
    loads = rng.gamma(0.7, 100.0, size=(num_layers, num_experts))
    if kind == "zeros":
        loads *= rng.random(loads.shape) < 0.5
    elif kind == "hot":
        loads[np.arange(num_layers), rng.integers(0, num_experts, num_layers)] *= 1000
    elif kind == "uniform":
        loads[:] = 7.0
    elif kind == "empty":
        loads[:] = 0.0
    return np.round(loads)
