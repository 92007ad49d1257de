"""CPU stand-in for the ``torch.npu`` stream/event API.

CPU work is synchronous, so streams are no-ops that keep the same call shapes:
code written for ``torch.npu`` (``with device.stream(s): ...``,
``event.record(); event.wait()``) runs unchanged.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Stream:
    def __init__(self, device=None, priority: int = 0) -> None:
        self.device = device
        self.priority = priority

    def wait_stream(self, stream: "Stream") -> None:
        return None

    def wait_event(self, event: "Event") -> None:
        return None

    def record_event(self, event: "Event | None" = None) -> "Event":
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


class Event:
    def __init__(self, enable_timing: bool = False, blocking: bool = False) -> None:
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._time = time.perf_counter()

    def wait(self, stream: Stream | None = None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: "Event") -> float:
        """Milliseconds between two recorded events."""
        if self._time is None or end_event._time is None:
            raise RuntimeError("both events must be recorded before elapsed_time")
        return (end_event._time - self._time) * 1000.0


_DEFAULT = Stream()
_current = _DEFAULT


def current_stream(device=None) -> Stream:
    return _current


def default_stream(device=None) -> Stream:
    return _DEFAULT


@contextlib.contextmanager
def stream(s: Stream | None) -> Iterator[None]:
    global _current
    previous, _current = _current, (s or _current)
    try:
        yield
    finally:
        _current = previous


def set_stream(s: Stream) -> None:
    global _current
    _current = s


def synchronize(device=None) -> None:
    return None


def is_available() -> bool:
    return False


def device_count() -> int:
    return 0


def set_device(device) -> None:
    return None


def current_device() -> int:
    return 0


def empty_cache() -> None:
    return None


def mem_get_info(device=None) -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return vm.available, vm.total
