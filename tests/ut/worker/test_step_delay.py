"""The test-only decode slowdown: which steps it delays and by how much (a fake clock)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_ascend import envs
from vllm_ascend.worker import step_delay
from vllm_ascend.worker.cpu_worker import AscendCPUWorker
from vllm_ascend.worker.step_delay import DecodeSlowdownMixin


def out(counts, new=()):
    return SimpleNamespace(num_scheduled_tokens=counts, scheduled_new_reqs=list(new),
                           total_num_scheduled_tokens=sum(counts.values()))


class Clock:
    """perf_counter advanced by the fake forward; sleep records what it was asked."""

    def __init__(self):
        self.now, self.slept = 100.0, []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        self.slept.append(s)


class Base:
    def __init__(self, clock, forward_s):
        self.clock, self.forward_s = clock, forward_s

    def execute_model(self, so):
        self.clock.now += self.forward_s
        return "out"


class Worker(DecodeSlowdownMixin, Base):
    pass


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(step_delay, "time", c)
    return c


def test_decode_steps_sleep_the_fraction_of_their_forward(clock, monkeypatch):
    monkeypatch.setenv(envs.DECODE_SLOWDOWN_ENV, "0.2")
    w = Worker(clock, forward_s=0.025)
    assert w.execute_model(out({"a": 1, "b": 1})) == "out"
    assert clock.slept == [pytest.approx(0.005)]
    w.execute_model(out({"a": 7}))  # prefill: untouched
    w.execute_model(out({"a": 1}, new=["x"]))  # a new request: prefill
    w.execute_model(out({}))  # nothing scheduled
    assert len(clock.slept) == 1


@pytest.mark.parametrize("value", ["", "0", "0.0"])
def test_unset_or_zero_never_sleeps(clock, monkeypatch, value):
    monkeypatch.setenv(envs.DECODE_SLOWDOWN_ENV, value)
    w = Worker(clock, forward_s=0.025)
    w.execute_model(out({"a": 1}))
    assert clock.slept == []


@pytest.mark.parametrize("value", ["-0.1", "11", "fast", "nan"])
def test_bad_values_name_the_variable_and_the_range(monkeypatch, value):
    monkeypatch.setenv(envs.DECODE_SLOWDOWN_ENV, value)
    with pytest.raises(envs.AscendConfigError, match=f"{envs.DECODE_SLOWDOWN_ENV}=.*from 0 to 10"):
        envs.decode_slowdown()


def test_the_cpu_worker_carries_the_knob_first():
    assert AscendCPUWorker.__mro__[1] is DecodeSlowdownMixin
