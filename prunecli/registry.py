"""A name -> implementation table, so config values select code without if/elif chains."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from prunecli.errors import PruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (as written in configs) to implementations.

    ``@REG.register("name")`` adds an entry; ``REG.get("name")`` returns it or raises a
    one-line :class:`PruneError` listing the valid names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = fn
            return fn

        return add

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` (for entries that are objects, not decorated functions)."""
        return self.register(name)(entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise PruneError(
                f"unknown {self.kind} {name!r} (choose from: {', '.join(self.names())})"
            ) from None

    def chosen(self, name: str) -> T | None:
        """The entry of an optional stage's group (``analysis``, ``update``): None for ``none``."""
        return None if name == "none" else self.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
