"""bench.cache_pressure: the reads go through the whole pool, in turn."""

from __future__ import annotations

import pytest

from bench import cache_pressure


def test_reads_walk_the_pool_in_turn_and_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_pressure, "POOL_OBJECTS", 10)
    seen: list[int] = []

    class Spy(dict[int, int]):
        def get(self, key: int, default: object = None) -> object:  # type: ignore[override]
            seen.extend(self)
            return super().get(key, default)

    monkeypatch.setattr(cache_pressure, "_item", lambda number: Spy({number: number}))
    read = cache_pressure.unrelated_reads(4)
    read()
    read()
    read()
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_zero_reads_nothing_and_a_negative_count_is_refused() -> None:
    cache_pressure.unrelated_reads(0)()
    with pytest.raises(ValueError, match="count must be >= 0"):
        cache_pressure.unrelated_reads(-1)
