"""A name -> object registry: models, search spaces and search strategies are each found by name."""

from __future__ import annotations

from typing import Generic, TypeVar

from dfnas.errors import DfnasError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered once under a name; an unknown name is a one-line error listing the known ones."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind  # what a name names, for the error ("search space")
        self.hint = hint  # appended to the list of known names
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            raise DfnasError(f"unknown {self.kind} {name!r} (known: {', '.join(sorted(self._items))}{self.hint})")
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
