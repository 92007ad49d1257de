"""The oracle side of the fast-path tests: the reference's plain math, every fast path off."""

from __future__ import annotations

import contextlib
from typing import Iterator

from vllm_ascend.device.reference import cpu_kernels as ck


@contextlib.contextmanager
def exact_only() -> Iterator[None]:
    """``cpu_kernels.force_exact`` inside the block."""
    saved, ck.force_exact = ck.force_exact, True
    try:
        yield
    finally:
        ck.force_exact = saved


def plain(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with every fast path off."""
    with exact_only():
        return fn(*args, **kwargs)
