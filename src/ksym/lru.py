"""A least-recently-used mapping on a plain dict (insertion order is recency order).

The engine's caches need only ``get``, ``[key] = value``, ``in``, ``len``, ``pop`` and ``clear``; a dict
does that without importing cachetools (and its random/heapq) on every command's start.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``maxsize`` entries; reading (:meth:`get`) or writing a key makes it the most recent, and
    an insertion past ``maxsize`` drops the least recent."""

    __slots__ = ("_data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: dict[K, V] = {}

    def get(self, key: K, default: V | None = None) -> V | None:
        data = self._data
        if key not in data:
            return default
        value = data[key] = data.pop(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        data.pop(key, None)
        data[key] = value
        while len(data) > self.maxsize:
            del data[next(iter(data))]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def clear(self) -> None:
        self._data.clear()
