"""Crash points: the process dies at an exact place in its work, as a SIGKILL there would.

A random SIGKILL rarely lands in the narrow windows that matter most: between a
batch's commit and its offset commit, between the relay's send and its deleting the
rows, or around the fast path's send of a commit's reservation rows. The fault suite
(`make faults`) arms these points instead, as FoundationDB's buggify and TiKV's
fail-rs do:

    STOCK_FAILPOINTS="after_commit@40,relay_after_send@3"

makes the process exit at once (`os._exit`: no cleanup, no flush, no offset commit)
the 40th time it passes `after_commit`, or the 3rd time it passes `relay_after_send`.
The exit status names the point. Never set in production; unset, `reach` costs one
dict lookup.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

#: Each point and the exit status that names it.
EXIT_CODES = {
    # Inside the batch transaction, everything written, nothing committed.
    "mid_batch": 81,
    # The batch transaction committed; Kafka offsets not committed yet.
    "after_commit": 82,
    # Kafka acknowledged the relay's batch; the rows are not deleted yet.
    "relay_after_send": 83,
    # A transaction committed and handed its stock.reservation rows to the fast path,
    # which is about to send them (service/adapters/fast_publish.py).
    "fast_before_send": 84,
    # Kafka acknowledged the fast path's rows; they are not deleted yet.
    "fast_after_send": 85,
}


def parse(spec: str) -> dict[str, int]:
    """`name@N[,name@N...]` -> {name: N}; unknown names and bad counts are refused."""
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition("@")
        if name not in EXIT_CODES or not count.isdigit() or int(count) < 1:
            raise ValueError(f"STOCK_FAILPOINTS: {part!r} is not one of {sorted(EXIT_CODES)}@N")
        armed[name] = int(count)
    return armed


_armed = parse(os.environ.get("STOCK_FAILPOINTS", ""))
_passed: Counter[str] = Counter()


def reach(name: str) -> None:
    if not _armed or name not in _armed:
        return
    _passed[name] += 1
    if _passed[name] >= _armed[name]:
        sys.stderr.write(f"failpoint {name} reached: exiting with {EXIT_CODES[name]}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODES[name])
