"""One registry type for everything kerasllm looks up by name (models, tasks).

A `Registry` maps names to items: a second item under the same name is refused, a
missing name is a one-line error with a did-you-mean, and `names()` lists them sorted.
It imports nothing of kerasllm's but the error type, so any floor may use it; the
registries themselves are filled in one place each (`kerasllm.tasks`, `kerasllm.catalog`).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Generic, Iterator, TypeVar

from kerasllm.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → item, with duplicates refused and misses explained.

    Args:
        kind: what the items are, for messages ("model", "task").
        hint: appended to a miss, e.g. "see `kerasllm list`".
        check: optional `check(item)` run before an item is added (raises `ValueError` to refuse it).

    Example:
        >>> shapes = Registry("shape")
        >>> shapes.register("square", 4)
        4
        >>> shapes.get("square")
        4
    """

    def __init__(self, kind: str, hint: str = "", check: Callable[[T], None] | None = None):
        self.kind, self.hint, self.check = kind, hint, check
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if self.check is not None:
            self.check(item)
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, item: T) -> Iterator[T]:
        """`item` registered inside the block and removed after it (tests, throwaway plugins)."""
        self.register(name, item)
        try:
            yield item
        finally:
            self.unregister(name)

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f" ({self.hint})" if self.hint else ""
            raise UserError(f"unknown {self.kind} {name!r}; {hint}known {self.kind}s: {', '.join(self.names())}{where}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[T]:
        """The items, in name order."""
        return [self._items[name] for name in self.names()]
