"""ksym.lru.LRUCache: the engine's caches keep the most recently used entries."""

from __future__ import annotations

from ksym.lru import LRUCache


def test_lru_drops_the_least_recent() -> None:
    c: LRUCache[int, str] = LRUCache(maxsize=2)
    c[1] = "a"
    c[2] = "b"
    assert c.get(1) == "a"  # 1 is now the most recent
    c[3] = "c"
    assert 2 not in c and 1 in c and 3 in c and len(c) == 2
    c[1] = "A"  # rewriting a key makes it the most recent too
    c[4] = "d"
    assert 3 not in c and c.get(1) == "A" and c.get(4) == "d"
    assert c.get(5) is None and c.get(5, "x") == "x"
    assert c.pop(4) == "d" and c.pop(4) is None and len(c) == 1
    c.clear()
    assert len(c) == 0
