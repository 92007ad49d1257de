"""Synthetic per-step expert loads for ``python -m bench eplb``, built from recorded traces.

A trace file is ``{"logical_count": [[count per expert] per layer]}`` (all-zero rows are
dense layers and are dropped). From the traces' per-layer popularity vectors:

- mild drift: before the switch, the popularity moves linearly along the first half of the
  traces (``t0 -> t1`` for five traces); after it, along the rest (``t2 -> t3 -> t4``);
- the workload switch: at ``switch_step`` the popularity jumps from the end of the first
  path to the start of the second;
- jitter: each expert's log-popularity follows a mean-reverting random walk;
- hot bursts: now and then one expert of a layer gets ``burst_factor`` times its share for
  ``burst_steps`` steps;
- each step's loads: ``tokens_per_step x top_k`` expert picks drawn multinomially from the
  popularity (picks with replacement: a token may pick one expert twice; at these counts
  that changes nothing measurable).

128-expert loads are the 256-expert ones folded: expert ``i`` of 128 = experts ``2i`` and
``2i + 1`` of 256 summed (a model with half the experts, each serving two experts' tokens).
Everything is seeded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def read_trace(path: str | Path) -> np.ndarray:
    """``(layers, E)`` float64 counts of one trace file (dense rows kept)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        counts = np.asarray(doc["logical_count"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"trace {path}: expected JSON {{\"logical_count\": [[...] per "
                         f"layer]}} ({type(e).__name__}: {e})") from None
    if counts.ndim != 2 or (counts < 0).any():
        raise SystemExit(f"trace {path}: 'logical_count' must be a (layers, experts) table of "
                         f"counts >= 0, got shape {counts.shape}")
    return counts


def popularity(traces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised per-layer popularity of the MoE layers common to all traces.

    ``traces``: ``(layers, E)`` each (same shape) -> ``(n, L, E)`` rows summing to 1, and
    ``(L,)`` the model layer indices kept (layers with load in every trace).
    """
    shapes = {t.shape for t in traces}
    if len(shapes) != 1:
        raise SystemExit(f"traces differ in shape: {sorted(shapes)}")
    stack = np.stack(traces)
    moe = np.nonzero((stack.sum(axis=2) > 0).all(axis=0))[0]
    stack = stack[:, moe]
    return stack / stack.sum(axis=2, keepdims=True), moe


@dataclass(frozen=True)
class LoadConfig:
    steps: int = 600
    switch_step: int = 300
    tokens_per_step: int = 1 << 20
    top_k: int = 8
    jitter: float = 0.002         # per-step sd of the log-popularity walk
    revert: float = 0.05          # its pull back to 0 per step
    burst_rate: float = 0.004     # bursts per layer per step
    burst_factor: float = 1.5
    burst_steps: int = 20
    seed: int = 0


def _path(pop: np.ndarray, frac: float) -> np.ndarray:
    """Point ``frac`` in [0, 1] along the piecewise-linear path through ``pop`` (n, L, E)."""
    if len(pop) == 1:
        return pop[0]
    x = frac * (len(pop) - 1)
    i = min(int(x), len(pop) - 2)
    return pop[i] * (1 - (x - i)) + pop[i + 1] * (x - i)


def step_loads(pop: np.ndarray, cfg: LoadConfig, progress=None) -> np.ndarray:
    """Per-step loads: ``(n, L, 256)`` popularity -> ``(steps, L, 256)`` float32 counts.

    ``progress(step)`` is called every 100 steps when given.
    """
    rng = np.random.default_rng(cfg.seed)
    n = len(pop)
    before, after = (pop[: max(1, n // 2)], pop[max(1, n // 2):]) if n > 1 else (pop, pop)
    _, num_layers, num_experts = pop.shape
    walk = np.zeros((num_layers, num_experts))
    burst_left = np.zeros((num_layers, num_experts), dtype=np.int64)
    out = np.empty((cfg.steps, num_layers, num_experts), dtype=np.float32)
    picks = cfg.tokens_per_step * cfg.top_k
    for t in range(cfg.steps):
        if t < cfg.switch_step:
            base = _path(before, t / max(cfg.switch_step - 1, 1))
        else:
            base = _path(after, (t - cfg.switch_step) / max(cfg.steps - cfg.switch_step - 1, 1))
        walk = walk * (1 - cfg.revert) + cfg.jitter * rng.standard_normal(walk.shape)
        new = rng.random(num_layers) < cfg.burst_rate
        burst_left[new, rng.integers(0, num_experts, int(new.sum()))] = cfg.burst_steps
        p = base * np.exp(walk) * np.where(burst_left > 0, cfg.burst_factor, 1.0)
        burst_left = np.maximum(burst_left - 1, 0)
        out[t] = rng.multinomial(picks, p / p.sum(axis=1, keepdims=True))
        if progress is not None and t % 100 == 0:
            progress(t)
    return out


def fold(loads: np.ndarray, num_experts: int) -> np.ndarray:
    """``(..., E)`` -> ``(..., num_experts)``: adjacent groups of ``E / num_experts`` summed."""
    e = loads.shape[-1]
    if e % num_experts:
        raise SystemExit(f"cannot fold {e} experts into {num_experts}")
    return loads.reshape(*loads.shape[:-1], num_experts, e // num_experts).sum(axis=-1)
