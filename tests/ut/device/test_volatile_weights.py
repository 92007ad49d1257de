"""Volatile weights (``mark_volatile``): rewritten between uses, so never prepacked.

int8_mm multiplies them as stored (``torch._int_mm``): exact accumulators, checked against
float64 products, and no prepacked build however often their contents change; a weight not
marked keeps its cached prepacked form.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ut.device.exact import exact_only
from vllm_ascend.device import mark_volatile_weights
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import matmul as mm

needs_kernels = pytest.mark.skipif(not (ck.native_available() or ck.onednn_available()),
                                   reason="no int8 fast path here")


@pytest.fixture(autouse=True)
def fresh_marks(monkeypatch):
    monkeypatch.setattr(ck, "_volatile", weakref.WeakKeyDictionary())
    monkeypatch.setattr(ck, "_any_volatile", False)


def ints(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)


def all_builds() -> int:
    return sum(ck.builds(k) for k in ("onednn_weights", "i8_weights"))


@needs_kernels
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 20), k=st.sampled_from([1, 7, 64, 1023, 1024, 2100]),
       n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_volatile_int8_mm_is_exact_and_builds_nothing(m, k, n, seed):
    a, w = ints(seed, (m, k)), ints(seed + 1, (k, n))
    mark_volatile_weights(w)
    before = all_builds()
    for step in range(3):  # a broadcast rewrites the buffer before every use
        with torch.no_grad():
            w.copy_(ints(seed + 2 + step, (k, n)))
        y = ck.int8_mm(a, w)
        assert y.dtype == (torch.float32 if k <= 1023 else torch.float64)
        assert torch.equal(y.double(), a.double() @ w.double())
    assert all_builds() == before


@needs_kernels
def test_views_of_a_marked_storage_are_volatile_others_are_not():
    buf = ints(1, (2, 64, 32))
    mark_volatile_weights(buf)
    assert ck.is_volatile(buf[1]) and ck.is_volatile(buf[0].t())
    plain = ints(2, (64, 32))
    assert not ck.is_volatile(plain)
    a = ints(3, (4, 64))
    before = all_builds()
    ck.int8_mm(a, buf[1])
    assert all_builds() == before
    ck.int8_mm(a, plain)  # a weight that is not volatile: prepacked once, as before
    ck.int8_mm(a, plain)
    assert all_builds() == before + 1


@needs_kernels
def test_quant_matmul_on_a_volatile_weight_equals_the_plain_path():
    a, w = ints(4, (5, 200)), ints(5, (200, 48))
    scale = torch.rand(48, generator=torch.Generator().manual_seed(6)) * 0.01 + 0.001
    tok = torch.rand(5, generator=torch.Generator().manual_seed(7)) + 0.5
    mark_volatile_weights(w)
    fast = mm.npu_quant_matmul(a, w, scale, pertoken_scale=tok, output_dtype=torch.float32)
    with exact_only():
        plain = mm.npu_quant_matmul(a, w, scale, pertoken_scale=tok, output_dtype=torch.float32)
    assert torch.equal(fast, plain)


def test_nothing_marked_nothing_checked():
    assert not ck._any_volatile and not ck.is_volatile(ints(8, (4, 4)))
    mark_volatile_weights()
    assert not ck._any_volatile
