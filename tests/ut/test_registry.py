"""The one registry helper: register, duplicate guard, lookup errors, discovery, listing."""

from __future__ import annotations

import pytest

from vllm_ascend.registry import Registry


def test_register_get_and_listing():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        pass

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and reg.get("b") is b
    assert reg.keys() == ["a", "b"] and reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg
    assert reg.listing() == "a, b"


def test_duplicate_key_raises_and_keeps_the_first():
    reg = Registry("widget")
    first = reg.register("a")(type("First", (), {}))
    with pytest.raises(ValueError, match=r"widget 'a' is already registered \(.*First\)"):
        reg.register("a")(type("Second", (), {}))
    assert reg.get("a") is first
    reg.add("a", first)  # the same object again: a no-op (a module imported twice)


@pytest.mark.parametrize("key", ["", None, ("W8A8", "")])
def test_empty_key_refused(key):
    with pytest.raises(ValueError, match="must be non-empty"):
        Registry("widget").register(key)


def test_unknown_key_names_the_registered_ones_with_the_chosen_error():
    class Unsupported(Exception):
        pass

    reg = Registry("scheme", error=Unsupported, format_key="/".join)
    reg.register(("W8A8", "linear"))(object)
    with pytest.raises(Unsupported, match=r"unknown scheme 'W4A4/moe'; registered: W8A8/linear"):
        reg.get(("W4A4", "moe"))
    assert Registry("policy").listing() == "(none)"


def test_on_register_and_discover_run_once():
    seen, calls = [], []

    def discover():
        calls.append(1)
        reg.register("late")(object)

    reg = Registry("widget", on_register=lambda k, o: seen.append(k), discover=discover)
    assert reg.keys() == ["late"] and reg.keys() == ["late"] and calls == [1]
    assert seen == ["late"]
