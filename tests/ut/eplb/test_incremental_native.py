"""The C++ ``incremental`` (csrc/eplb_incremental.cpp, via ctypes) gives the numpy reference's
placement exactly: same algorithm, same tie-breaking, same summation order."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.eplb.conftest import configs, loads_for
from vllm_ascend.eplb.placement import validate_placement
from vllm_ascend.eplb.policies.deepseek import deepseek
from vllm_ascend.eplb.policies.incremental import _native_op, incremental

pytestmark = pytest.mark.skipif(_native_op(required=False) is None,
                                reason="vllm_ascend._eplb (csrc/) is not built")


def both(loads, num_ranks, num_slots, current, **kw):
    a = incremental(loads, num_ranks, num_slots, current, native=False, **kw)
    b = incremental(loads, num_ranks, num_slots, current, native=True, **kw)
    return a, b


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_native_equals_numpy_on_tied_and_skewed_loads(data):
    num_experts, num_ranks, num_slots = data.draw(configs())
    first = data.draw(loads_for(3, num_experts))
    current = deepseek(first, num_ranks, num_slots)
    loads = data.draw(loads_for(3, num_experts))
    kw = data.draw(st.fixed_dictionaries({
        "max_moves": st.sampled_from([0.0, 0.1, 0.25, 1.0]),
        "min_gain": st.sampled_from([0.0, 0.0075, 0.05]),
        "partners": st.integers(1, 9),
        "hysteresis": st.sampled_from([0.0, 0.02, 0.05]),
    }))
    a, b = both(loads, num_ranks, num_slots, current, **kw)
    assert b.dtype == np.int64 and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    assert validate_placement(b, num_experts, num_ranks) == []


@pytest.mark.parametrize("num_experts, num_ranks, redundant", [(256, 64, 64), (256, 32, 32),
                                                               (128, 16, 16)])
def test_native_equals_numpy_along_a_drifting_run(num_experts, num_ranks, redundant):
    """Bench-sized layers (58 x 256 at EP64), chained rebalances with drift and a switch."""
    rng = np.random.default_rng(num_ranks)
    pop = rng.lognormal(0, 1.2, size=(58, num_experts))
    other = rng.lognormal(0, 1.2, size=(58, num_experts))
    current = None
    for step in range(8):
        p = (pop if step < 4 else other) * np.exp(0.05 * rng.standard_normal(pop.shape))
        loads = rng.poisson(1e5 * p / p.sum(axis=1, keepdims=True)).astype(np.float64)
        if current is None:
            current = incremental(loads, num_ranks, num_experts + redundant)
            continue
        a, b = both(loads, num_ranks, num_experts + redundant, current)
        np.testing.assert_array_equal(a, b)
        current = b


def test_native_true_and_numpy_reference_agree_on_the_default():
    loads = np.random.default_rng(5).gamma(0.7, 100.0, size=(2, 16))
    current = deepseek(loads[::-1], 4, 20)
    np.testing.assert_array_equal(incremental(loads, 4, 20, current),
                                  incremental(loads, 4, 20, current, native=False))


def test_the_planner_side_loads_without_torch():
    """The planner process imports numpy only: the C++ policy must not pull torch in."""
    code = ("import sys, numpy as np; from vllm_ascend.eplb.policies import get_policy; "
            "p = get_policy('incremental'); w = np.arange(32.0).reshape(2, 16); "
            "c = p(w, 4, 20); p(w[::-1], 4, 20, c, native=True); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
