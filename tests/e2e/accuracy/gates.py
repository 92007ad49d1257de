"""The accuracy gates: pure functions of per-item scores (no lm-eval, no engine).

- ``expected``: ``|value - expected| <= tolerance``;
- ``reference`` (quantized vs fp32 on the same items): one-sided, passes when the Wilson
  lower bound of the run's accuracy is at least ``reference - tolerance``;
- ``equal`` (parallel / EPLB layouts vs the single process): identical per-item answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: One-sided 95%: the standard normal's 0.95 quantile.
Z_ONE_SIDED_95 = 1.6448536269514722


def wilson_interval(successes: float, n: int, z: float = Z_ONE_SIDED_95) -> tuple[float, float]:
    """Wilson score interval ``(lower, upper)`` of a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError(f"n={n} must be positive")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be in [0, n={n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def stderr(scores: list[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)), as lm-eval reports."""
    n = len(scores)
    if n < 2:
        return float("nan")
    mean = sum(scores) / n
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    value: float
    bound: float  # what the value (or its Wilson lower bound) was held against
    detail: str


def check_expected(value: float, expected: float, tolerance: float) -> Verdict:
    ok = abs(value - expected) <= tolerance + 1e-12
    return Verdict(ok, value, expected, f"|{value:.4f} - {expected:.4f}| "
                   f"{'<=' if ok else '>'} {tolerance}")


def check_reference(scores: list[float], reference: float, tolerance: float) -> Verdict:
    """``scores``: per-item 0/1 of the run under test; ``reference``: the baseline's mean."""
    n = len(scores)
    value = sum(scores) / n
    lower, _ = wilson_interval(sum(scores), n)
    ok = lower >= reference - tolerance - 1e-12
    return Verdict(ok, value, reference - tolerance,
                   f"Wilson lower {lower:.4f} {'>=' if ok else '<'} {reference:.4f} - "
                   f"{tolerance} (n={n})")


def check_equal(items: dict[int, str], reference: dict[int, str]) -> Verdict:
    """``items``: doc id -> the model's answer (generated text or chosen option); the run may
    cover the first docs of the reference's (a smaller ``limit``), never others."""
    if not items or not set(items) <= set(reference):
        return Verdict(False, 0.0, 1.0, f"items not a subset of the reference's: {len(items)} "
                       f"items, {len(set(items) - set(reference))} of them not among the "
                       f"reference's {len(reference)}")
    differ = sorted(d for d in items if items[d] != reference[d])
    agree = 1 - len(differ) / max(1, len(items))
    return Verdict(not differ, agree, 1.0,
                   f"{len(items) - len(differ)}/{len(items)} answers equal"
                   + (f"; first differing docs {differ[:5]}" if differ else ""))
