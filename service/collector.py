"""Python's cyclic garbage collector, kept out of the answers' tail latency.

A full (generation 2) collection walks every object the collector tracks, with the
event loop stopped: no HTTP answer, no batch, no publish in the meantime. A started
`stock` process holds about 200,000 of them (modules, FastAPI's routes, pydantic's
validators, SQLAlchemy's compiled statements), and walking them took 40-80 ms here;
under load a full collection comes every few seconds, which was the ~100 ms p99 of
HTTP reserves while their p95 was 20 ms (docs/design.md, "Garbage collection").

Everything that exists once the process has started lives as long as the process:
`gc.freeze()` moves it to the permanent generation, out of every later collection's
walk, so a full collection walks only what was made since. Cycles among those frozen
objects are never collected; there are none worth the pause.

Each collection's pause is observed (`stock_gc_pause_seconds{generation}`), so a tail
that comes back can be told apart from the database or the broker.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from service import metrics

log = logging.getLogger(__name__)

_started: list[float] = []


def _observe(phase: str, info: dict[str, Any]) -> None:
    # Called by the interpreter around every collection: two clock reads and an add.
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        metrics.GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(
            time.perf_counter() - _started.pop()
        )


def observe_pauses() -> None:
    """Time every collection from now on (idempotent)."""
    if _observe not in gc.callbacks:
        gc.callbacks.append(_observe)


def freeze_what_started() -> None:
    """Called once the process has started: what exists now is never collected again."""
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects out of the garbage collector's walk", gc.get_freeze_count())
