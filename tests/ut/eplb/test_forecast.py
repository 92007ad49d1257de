"""The load estimate a rebalance plans for: the window's sum, or its per-expert linear
trend ahead of the window, checked against numpy's least-squares line fit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend.eplb.config import EplbConfigError, parse_eplb_config
from vllm_ascend.eplb.forecast import estimate_loads, horizon_for, window_weights


def fitted(ages: np.ndarray, x: np.ndarray, horizon: float) -> np.ndarray:
    """Oracle: np.polyfit's line per column at ``horizon`` past the last row, x n rows."""
    t = -ages.astype(np.float64)
    slope, intercept = np.polyfit(t, x, 1)
    return len(t) * (intercept + slope * horizon)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_trend_weights_are_the_least_squares_line(data):
    n = data.draw(st.integers(2, 12))
    ages = np.array(sorted(data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n,
                                              unique=True)), reverse=True))
    horizon = data.draw(st.floats(0, 30))
    seed = data.draw(st.integers(0, 2**31))
    x = np.random.default_rng(seed).gamma(2.0, 50.0, size=(n, 5))
    c = window_weights(ages, "trend", horizon)
    np.testing.assert_allclose(c @ x, fitted(ages, x, horizon), rtol=1e-9, atol=1e-7)


def test_trend_extrapolates_a_line_exactly_and_window_is_the_sum():
    x = (100.0 + 3.0 * np.arange(8))[:, None] * np.ones((1, 4))   # +3 per step
    est = estimate_loads(x, "trend", horizon=5)
    np.testing.assert_allclose(est, 8 * (100.0 + 3.0 * (7 + 5)))
    np.testing.assert_array_equal(estimate_loads(x, "window", 5), x.sum(axis=0))


def test_trend_is_clipped_at_zero_and_degenerates_to_the_sum():
    falling = np.array([[9.0], [5.0], [1.0]])
    assert estimate_loads(falling, "trend", horizon=10)[0] == 0.0
    one = np.array([[4.0, 2.0]])
    np.testing.assert_array_equal(estimate_loads(one, "trend", 3), [4.0, 2.0])
    np.testing.assert_array_equal(window_weights(np.array([0]), "trend", 3), [1.0])


def test_bad_estimate_names_the_accepted_values():
    with pytest.raises(ValueError, match="accepted values: trend, window"):
        window_weights(np.arange(3), "ewma", 1.0)
    with pytest.raises(EplbConfigError, match=r"\['load_estimate'\] = 'ewma': accepted values: "
                       r"trend, window"):
        parse_eplb_config({"load_estimate": "ewma"})
    assert parse_eplb_config({}).load_estimate == "trend"
    assert parse_eplb_config({"load_estimate": "window"}).load_estimate == "window"
    assert horizon_for(20) == 5
