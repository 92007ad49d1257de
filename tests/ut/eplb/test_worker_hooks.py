"""What the worker hooks decide per step, without a model."""

from __future__ import annotations

from types import SimpleNamespace

from vllm_ascend.worker.eplb_worker import EplbWorkerMixin, step_kind


def out(counts, new=()):
    return SimpleNamespace(num_scheduled_tokens=counts, scheduled_new_reqs=list(new),
                           total_num_scheduled_tokens=sum(counts.values()))


def test_step_kind():
    assert step_kind(out({"a": 1, "b": 1})) == "decode"
    assert step_kind(out({"a": 1, "b": 7})) == "prefill"  # a mixed batch has prefill
    assert step_kind(out({"a": 1}, new=["x"])) == "prefill"


class Base:
    def __init__(self):
        self.calls = []

    def execute_model(self, so):
        self.calls.append("forward")
        return "out"

    def execute_dummy_batch(self):
        self.calls.append("dummy")


class Worker(EplbWorkerMixin, Base):
    pass


class Runtime:
    def __init__(self, calls):
        self.calls, self.enabled = calls, True

    def before_step(self, kind):
        self.calls.append(("before", kind))

    def after_step(self):
        self.calls.append("after")


def test_hooks_wrap_forwards_only():
    w = Worker()
    assert w.execute_model(out({"a": 1})) == "out" and w.calls == ["forward"]  # EPLB off
    w.eplb = Runtime(w.calls)
    w.calls.clear()
    w.execute_model(out({"a": 1}))
    w.execute_model(out({}))  # nothing scheduled: no forward pass, no step
    w.execute_dummy_batch()
    assert w.calls == [("before", "decode"), "forward", "after", "forward",
                       ("before", None), "dummy", "after"]
