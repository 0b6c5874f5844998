"""service/collector.py: a started process's objects leave the collector's walk, and
every collection's pause is observed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service import collector, metrics


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def _pauses(generation: int) -> float:
    value = metrics.GC_PAUSE_SECONDS.labels(str(generation))._sum.get()  # type: ignore[attr-defined]
    return float(value)


def test_a_full_collection_is_observed_by_generation() -> None:
    collector.observe_pauses()
    collector.observe_pauses()  # idempotent: one callback, one observation a collection
    assert gc.callbacks.count(collector._observe) == 1
    before = _pauses(2)
    gc.collect()
    assert _pauses(2) > before


def test_what_exists_at_the_start_leaves_the_walk_and_later_objects_do_not(
    unfrozen: None,
) -> None:
    started = [1]  # a container the collector tracks
    collector.freeze_what_started()
    later = [2]
    walked = {id(tracked) for tracked in gc.get_objects()}
    assert id(started) not in walked, "frozen: no collection walks it again"
    assert id(later) in walked, "made after the start: collected as before"
