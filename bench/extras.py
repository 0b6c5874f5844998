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

from bench.stack import Stack

log = logging.getLogger(__name__)


@dataclass
class Extras:
    #: measure_http_reserve's figures, or None when not measured.
    http: dict[str, Any] | None = None
    #: Per span {name: {"p50_ms", "p99_ms", ...}}, or None when not measured.
    spans: dict[str, Any] | None = None
    #: Why a part is missing: {"http": "...", "spans": "..."}.
    missing: dict[str, str] | None = None


async def measure_extras(
    stack: Stack, *, http: bool = True, http_seconds: float = 10.0, spans: bool = True
) -> Extras:
    extras = Extras(missing={})
    assert extras.missing is not None
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


#: HOOK for H5's bench/span_breakdown.py: the first of these functions found is called
#: as `await fn(stack)` and must return {span name: {"p50_ms": float, "p99_ms": float}}.
_SPAN_FUNCTIONS = ("measure_span_breakdown", "span_breakdown", "measure_spans")


async def _span_breakdown(stack: Stack) -> dict[str, Any]:
    try:
        module = importlib.import_module("bench.span_breakdown")
    except ImportError as error:
        raise _NotThere(f"not measured: bench/span_breakdown.py is not there ({error})") from None
    for name in _SPAN_FUNCTIONS:
        function = getattr(module, name, None)
        if function is not None:
            figures: dict[str, Any] = await function(stack)
            return figures
    raise _NotThere(f"not measured: bench/span_breakdown.py has none of {_SPAN_FUNCTIONS}")
