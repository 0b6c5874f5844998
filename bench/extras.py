"""Figures `make bench` takes from other harnesses: the HTTP reserve path
(bench/http_reserve.py) and the latency breakdown by span (bench/span_breakdown.py).

Each is measured on the same stack in the same run. A harness that fails (or is not
there yet) leaves its section of the report saying so instead of losing the run.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from dataclasses import dataclass
from typing import Any

from bench.lock_hold import LockHold, measure_lock_hold
from bench.stack import Stack, drop_database, fresh_database

log = logging.getLogger(__name__)


@dataclass
class Extras:
    #: measure_http_reserve's figures, or None when not measured.
    http: dict[str, Any] | None = None
    #: Per span {name: {"p50_ms", "p99_ms", ...}}, or None when not measured.
    spans: dict[str, Any] | None = None
    #: The hot variant's row lock per batch size (bench/lock_hold.py).
    lock_hold: list[LockHold] | None = None
    #: Why a part is missing: {"http": "...", "spans": "..."}.
    missing: dict[str, str] | None = None


async def measure_extras(
    stack: Stack,
    *,
    http: bool = True,
    http_seconds: float = 10.0,
    spans: bool = True,
    lock_hold: bool = True,
) -> Extras:
    extras = Extras(missing={})
    assert extras.missing is not None
    if lock_hold:
        try:
            extras.lock_hold = await measure_lock_hold(stack)
        except Exception as error:
            log.error("lock hold measurement failed:\n%s", traceback.format_exc())
            extras.missing["lock_hold"] = f"failed: {error!r}"
    if http:
        try:
            from bench.http_reserve import measure_http_reserve

            extras.http = await measure_http_reserve(stack, seconds=http_seconds)
        except Exception as error:  # the report says it; the run's other figures stay
            log.error("HTTP reserve measurement failed:\n%s", traceback.format_exc())
            extras.missing["http"] = f"failed: {error!r}"
    else:
        extras.missing["http"] = "skipped (--no-http)"
    if spans:
        try:
            extras.spans = await _span_breakdown(stack)
        except _NotThere as missing:
            extras.missing["spans"] = str(missing)
        except Exception as error:
            log.error("span breakdown failed:\n%s", traceback.format_exc())
            extras.missing["spans"] = f"failed: {error!r}"
    return extras


class _NotThere(Exception):
    pass


async def _span_breakdown(stack: Stack) -> dict[str, Any]:
    """H5's bench/span_breakdown.py `span_breakdown(database_url, bootstrap=...)`: traced
    two-line checkouts through the broker to a real worker, per span p50/p99/mean ms."""
    try:
        module = importlib.import_module("bench.span_breakdown")
    except ImportError as error:  # needs the OpenTelemetry SDK (the `bench` extra)
        raise _NotThere(f"not measured: bench.span_breakdown cannot load ({error})") from None
    breakdown = getattr(module, "span_breakdown", None)
    if breakdown is None:
        raise _NotThere("not measured: bench/span_breakdown.py has no span_breakdown()")
    url = await fresh_database(stack, "spans")
    try:
        figures: dict[str, Any] = await breakdown(url, bootstrap=stack.bootstrap)
        return figures
    finally:
        await drop_database(stack, url)
