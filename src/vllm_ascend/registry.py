"""One registry helper for every name -> object table in the plugin.

Schemes, MoE communication methods and EPLB policies are all registered with a decorator
under a readable key, looked up by that key, and listed in error messages. This class is
that mechanism, written once:

    POLICIES = Registry("EPLB policy")

    @POLICIES.register("deepseek")
    def deepseek(loads, num_ranks, num_slots, current=None): ...

    POLICIES.get("deepseek")      # the function
    POLICIES.get("nope")          # ValueError: unknown EPLB policy 'nope'; registered: deepseek
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Key -> object; a key can be registered once (a duplicate raises ``ValueError``).

    Args:
        what: what the entries are, for messages ("MoE communication method").
        error: the exception type raised for an unknown key (default ``ValueError``).
        on_register: called as ``on_register(key, obj)`` when an entry is added (e.g. to
            set a ``name`` attribute on a class).
        discover: called once before the first lookup or listing (e.g. to import every
            module of a package, whose decorators then fill the registry).
        format_key: how a key is written in messages (default ``str``).
    """

    def __init__(
        self,
        what: str,
        *,
        error: type[Exception] = ValueError,
        on_register: Callable[[Hashable, T], None] | None = None,
        discover: Callable[[], None] | None = None,
        format_key: Callable[[Hashable], str] = str,
    ) -> None:
        self.what = what
        self._error = error
        self._on_register = on_register
        self._discover = discover
        self._discovered = discover is None
        self._format_key = format_key
        self._entries: dict[Hashable, T] = {}

    def register(self, key: Hashable) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``key``."""
        if key is None or key == "" or (isinstance(key, tuple) and not all(key)):
            raise ValueError(f"{self.what} key must be non-empty, got {key!r}")

        def decorate(obj: T) -> T:
            self.add(key, obj)
            return obj

        return decorate

    def add(self, key: Hashable, obj: T) -> None:
        """Register ``obj`` under ``key``; re-adding the very same object is a no-op."""
        old = self._entries.get(key)
        if old is obj:
            return
        if old is not None:
            raise ValueError(
                f"{self.what} {self._format_key(key)!r} is already registered "
                f"({_qualname(old)}); cannot register {_qualname(obj)}"
            )
        self._entries[key] = obj
        if self._on_register is not None:
            self._on_register(key, obj)

    def get(self, key: Hashable) -> T:
        """The entry for ``key``; an unknown key raises with the list of registered keys."""
        self._ensure_discovered()
        try:
            return self._entries[key]
        except KeyError:
            raise self._error(
                f"unknown {self.what} {self._format_key(key)!r}; registered: {self.listing()}"
            ) from None

    def __contains__(self, key: Hashable) -> bool:
        self._ensure_discovered()
        return key in self._entries

    def keys(self) -> list:
        """Every registered key, sorted."""
        self._ensure_discovered()
        return sorted(self._entries)

    names = keys

    def listing(self) -> str:
        """The registered keys as one comma-separated string, for error messages."""
        return ", ".join(self._format_key(k) for k in self.keys()) or "(none)"

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self._discovered = True
            self._discover()


def _qualname(obj: object) -> str:
    return getattr(obj, "__qualname__", type(obj).__name__)
