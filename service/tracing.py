"""OpenTelemetry traces, off unless the standard `OTEL_*` variables ask for them.

The one home of tracing: setting it up, the W3C trace context in and out, and the
spans of the worker, the relay and the HTTP API.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it off. The SDK reads the
rest as usual (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`). The SDK and the OTLP exporter are the optional
`tracing` extra (`pip install 'stock-worker[tracing]'`): without them the process says
so once and runs untraced.

Off costs nothing per event: no SDK is set up, no span object is made, an incoming
`traceparent` is not even read (decoding does no tracing work; the event writer tests
`ENABLED`, a module boolean; the helpers below hand back one shared do-nothing context
manager, once per batch). So an incoming trace is not passed through either while
tracing is off (docs/design.md, Traces).

On, for a consumed batch (the OpenTelemetry messaging conventions for batch receive):

- `process batch`: one CONSUMER span per batch, linked to the context of every event
  that carries one (the CloudEvents `traceparent` attribute, in structured mode or as
  the `ce_traceparent` header, else a `traceparent` Kafka header); its children are the
  phases `decode`, `claim`, `lock`, `decide`, `write`, `commit`;
- `process <topic>`: for each such event, a CONSUMER span in the event's own trace
  (child of its context, linked to the batch span), from the batch's start to its end;
- every event the batch publishes carries the context of the event that caused it (its
  `process` span), as the `traceparent` attribute of the CloudEvent and a `traceparent`
  Kafka header; events with no traced cause (a `stock.low`) carry the batch's. The
  outbox row holds those bytes, so the relay (or any publisher) continues the trace;
- `publish <topic>`: a PRODUCER span per batch sent to Kafka, linked to each message's
  context.

An HTTP request gets a SERVER span that continues an incoming `traceparent` header; its
transaction's phases are its children and what it publishes carries its context.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pydantic_core

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

log = logging.getLogger(__name__)

#: True while a tracer provider is installed. Hot paths test it before any per-event work.
ENABLED = False
_tracer: Tracer | None = None
_provider: TracerProvider | None = None

TRACEPARENT = "traceparent"
INSTRUMENTATION_NAME = "stock-worker"
#: The phases of a transaction, in order (`publish <topic>` follows on the relay).
PHASES = ("decode", "claim", "lock", "decide", "write", "commit")
#: Links a span keeps unless OTEL_SPAN_LINK_COUNT_LIMIT says otherwise: the SDK's 128
#: would drop most of a 500-record batch's links.
DEFAULT_LINK_LIMIT = 1000

_EXPORTERS = ("otlp", "console", "none")
_TRACEPARENT_FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class TracingConfigurationError(ValueError):
    """OTEL_* variables that ask for something this service cannot do."""


# ------------------------------------------------------------------------- set up


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = _exporter_names(environ)
    if names is None:
        return bool(
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
    return any(name != "none" for name in names)


def configure_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Set up tracing if the OTEL_* variables ask for it; True if it is now on.

    Raises `TracingConfigurationError` for an exporter or protocol it does not know.
    Without the `tracing` extra installed it logs a warning and stays off: a shared
    OTEL_* setting in a cluster must not stop the stock service."""
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return False
    names = _exporter_names(environ) or ["otlp"]
    unknown = [name for name in names if name not in _EXPORTERS]
    if unknown:
        raise TracingConfigurationError(
            f"OTEL_TRACES_EXPORTER={','.join(names)}: {', '.join(unknown)} is not one of "
            f"{', '.join(_EXPORTERS)}"
        )
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if "otlp" in names and protocol != "http/protobuf":
        raise TracingConfigurationError(
            f"OTLP protocol {protocol!r}: this service exports over http/protobuf only "
            "(unset OTEL_EXPORTER_OTLP_PROTOCOL, or set it to http/protobuf)"
        )
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning(
            "traces asked for by the OTEL_* variables, but the OpenTelemetry SDK is not "
            "installed: pip install 'stock-worker[tracing]'; running without traces"
        )
        return False
    attributes: dict[str, str] = {}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = INSTRUMENTATION_NAME
    links = None if environ.get("OTEL_SPAN_LINK_COUNT_LIMIT") else DEFAULT_LINK_LIMIT
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; the provider
    # reads OTEL_TRACES_SAMPLER(_ARG), the exporter its OTEL_EXPORTER_OTLP_* variables.
    provider = TracerProvider(
        resource=Resource.create(attributes), span_limits=SpanLimits(max_links=links)
    )
    for name in names:
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning(
                    "OTLP trace export asked for, but opentelemetry-exporter-otlp-proto-http "
                    "is not installed: pip install 'stock-worker[tracing]'; running without "
                    "traces"
                )
                return False
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    install(provider)
    log.info("traces on: exporting to %s", ", ".join(n for n in names if n != "none"))
    return True


def install(provider: TracerProvider) -> None:
    """Trace with this provider from now on (tests and benchmarks pass one with an
    in-memory exporter). Kept here rather than as OpenTelemetry's global provider,
    which can be set only once per process."""
    global ENABLED, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    ENABLED = True


def uninstall() -> None:
    """Tracing off again; spans still buffered are flushed."""
    global ENABLED, _tracer, _provider
    provider = _provider
    ENABLED, _tracer, _provider = False, None, None
    if provider is not None:
        provider.force_flush()


def shutdown() -> None:
    """Flush and stop the exporter (at the end of a process)."""
    provider = _provider
    uninstall()
    if provider is not None:
        provider.shutdown()


def _exporter_names(environ: Mapping[str, str]) -> list[str] | None:
    given = environ.get("OTEL_TRACES_EXPORTER")
    if given is None or not given.strip():
        return None
    return [name.strip().lower() for name in given.split(",") if name.strip()]


# ------------------------------------------------------------------ trace context


def parse_traceparent(traceparent: str) -> SpanContext | None:
    """A W3C `traceparent` as a remote span context; None if it is not a valid one
    (an invalid trace context is ignored, never a reason to refuse an event)."""
    from opentelemetry.trace import SpanContext, TraceFlags

    match = _TRACEPARENT_FORMAT.match(traceparent.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags = match.groups()
    rest = traceparent.strip()[match.end() :]
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags, 16) & 0x01)
    )


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def incoming_traceparent(record: Any) -> str | None:
    """A consumed record's trace context: the CloudEvents `traceparent` attribute (the
    `ce_traceparent` header in binary mode, a top-level member of the value in
    structured mode), else a `traceparent` Kafka header.

    Read here, from the record, only while tracing is on (`received`): decoding does no
    tracing work at all when it is off. Structured mode costs one more JSON parse of the
    value (pydantic-core's, about 2 µs for a checkout), with tracing on only."""
    attribute: bytes | None = None
    header: bytes | None = None
    binary = False
    for name, raw in record.headers or ():
        if name == "ce_traceparent":
            attribute = raw
        elif name == TRACEPARENT:
            header = raw
        elif name == "ce_specversion":
            binary = True
    if binary:
        if attribute:
            return _ascii(attribute)
    elif record.value:
        try:
            document = pydantic_core.from_json(record.value)
        except ValueError:
            document = None
        value = document.get(TRACEPARENT) if isinstance(document, dict) else None
        if isinstance(value, str):
            return value
    return _ascii(header) if header else None


def _ascii(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def current_traceparent() -> str | None:
    """The current span's context as a `traceparent`; None outside any span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format_traceparent(context) if context.is_valid else None


def traceparent_for(cause: str | None) -> str | None:
    """The trace context an event to publish carries: that of the consumed event which
    caused it (`cause` is its order id: the correlation id of what it causes), else the
    current span's (the batch's or the HTTP request's). None while tracing is off."""
    if _tracer is None:
        return None
    batch = _BATCH.get()
    if batch is not None and cause is not None:
        found = batch.causes.get(cause)
        if found is not None:
            return found
    return current_traceparent()


def stamp(
    event: dict[str, Any], headers: tuple[tuple[str, bytes | None], ...], cause: str | None
) -> tuple[tuple[str, bytes | None], ...]:
    """Put the trace context on a structured CloudEvent about to be serialized (the
    `traceparent` extension attribute, which the contract allows) and return its
    headers with a `traceparent` header too. Called only while ENABLED."""
    traceparent = traceparent_for(cause)
    if traceparent is None:
        return headers
    event[TRACEPARENT] = traceparent
    return (*headers, (TRACEPARENT, traceparent.encode()))


def caused_by(causes: Mapping[str, str]) -> contextlib.AbstractContextManager[Any]:
    """While it lasts, events published for each cause (an order or reservation id)
    carry that cause's traceparent: for a transaction shared by several requests (the
    group commit), each with a trace of its own (`current_traceparent()` in each)."""
    if _tracer is None or not causes:
        return _NO_SPAN
    return _caused_by(causes)


@contextlib.contextmanager
def _caused_by(causes: Mapping[str, str]) -> Iterator[None]:
    state = _Batch(None)
    state.causes.update(causes)
    token = _BATCH.set(state)
    try:
        yield
    finally:
        _BATCH.reset(token)


# ------------------------------------------------------------------------- spans


class _NoSpan:
    """What every helper hands back while tracing is off: one shared object that does
    nothing, sync or async, so call sites need no `if`."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> _NoSpan:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def commit(self) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A phase span (`claim`, `lock`, ...), child of the current span; nothing while
    tracing is off or outside a recorded span (a maintenance job's transaction)."""
    if _tracer is None:
        return _NO_SPAN
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():
        return _NO_SPAN
    return _tracer.start_as_current_span(name)


class _Transaction:
    """Ends the `commit` span once the transaction's `async with` has committed."""

    __slots__ = ("_commit",)

    def __init__(self) -> None:
        self._commit: Span | None = None

    async def __aenter__(self) -> _Transaction:
        return self

    async def __aexit__(self, kind: object, error: BaseException | None, _: object) -> None:
        commit = self._commit
        if commit is None:
            return
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            commit.record_exception(error)
            commit.set_status(Status(StatusCode.ERROR, type(error).__name__))
        commit.end()

    def commit(self) -> None:
        """The step and the write-back are done: from here on, the commit."""
        from opentelemetry import trace

        if _tracer is not None and trace.get_current_span().is_recording():
            self._commit = _tracer.start_span("commit")


def transaction() -> _Transaction | _NoSpan:
    """Entered before the transaction's own `async with` (so it exits after the commit):
    `.commit()` after the write-back starts the `commit` span, which ends when the
    transaction does."""
    return _NO_SPAN if _tracer is None else _Transaction()


class _Batch:
    __slots__ = ("causes", "processing", "span")

    def __init__(self, span: Span | None) -> None:
        self.span = span
        #: cause (order id) -> the traceparent its published events carry
        self.causes: dict[str, str] = {}
        #: the per-event `process <topic>` spans, ended with the batch
        self.processing: list[Span] = []


_BATCH: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar(
    "stock_trace_batch", default=None
)


def batch(size: int, group: str | None = None) -> contextlib.AbstractContextManager[Any]:
    """The span of one consumed batch (`process batch`), current while it runs."""
    if _tracer is None:
        return _NO_SPAN
    return _traced_batch(_tracer, size, group)


@contextlib.contextmanager
def _traced_batch(tracer: Tracer, size: int, group: str | None) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.batch.message_count": size,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    with tracer.start_as_current_span(
        "process batch", kind=SpanKind.CONSUMER, attributes=attributes
    ) as batch_span:
        state = _Batch(batch_span)
        token = _BATCH.set(state)
        failed: BaseException | None = None
        try:
            yield batch_span
        except BaseException as error:
            failed = error
            raise
        finally:
            _BATCH.reset(token)
            for process in state.processing:
                if failed is not None:
                    process.set_status(Status(StatusCode.ERROR, type(failed).__name__))
                process.end()


def received(items: Iterable[Any]) -> None:
    """The batch's decoded events (`InboundEvent`s; `Poison`s are skipped): links the
    batch span to each event's context, opens its `process <topic>` span and remembers
    it as the context of what the event causes."""
    state = _BATCH.get()
    if state is None or state.span is None or _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan, SpanKind

    batch_link = [Link(state.span.get_span_context())]
    for item in items:
        if getattr(item, "ref", None) is None:  # a Poison: no event, no context
            continue
        traceparent = incoming_traceparent(item.record)
        if traceparent is None:
            continue
        remote = parse_traceparent(traceparent)
        if remote is None:
            continue
        state.span.add_link(remote)
        record = item.record
        process = _tracer.start_span(
            f"process {record.topic}",
            context=trace.set_span_in_context(NonRecordingSpan(remote)),
            kind=SpanKind.CONSUMER,
            links=batch_link,
            # Few: each attribute costs the SDK's checks, per event (the batch span
            # carries what all of them share).
            attributes={
                "messaging.destination.name": record.topic,
                "messaging.message.id": item.ref.id,
                "cloudevents.event_source": item.ref.source,
            },
        )
        state.processing.append(process)
        order_id = getattr(item.data, "order_id", None)
        if isinstance(order_id, str):
            state.causes.setdefault(order_id, format_traceparent(process.get_span_context()))


def publishing(
    topic: str, headers: Iterable[Iterable[tuple[str, bytes | None]]]
) -> contextlib.AbstractContextManager[Any]:
    """The span of one send of messages to `topic` (`publish <topic>`), linked to the
    context each message carries in its `traceparent` header. `headers` is read only
    while tracing is on (pass a generator)."""
    if _tracer is None:
        return _NO_SPAN
    from opentelemetry.trace import Link, SpanKind

    links: list[Link] = []
    count = 0
    for message_headers in headers:
        count += 1
        for name, raw in message_headers:
            if name == TRACEPARENT and raw:
                context = parse_traceparent(raw.decode("ascii", "replace"))
                if context is not None:
                    links.append(Link(context))
    return _tracer.start_as_current_span(
        f"publish {topic}",
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": count,
        },
    )


# -------------------------------------------------------------------------- HTTP

_Receive = Callable[[], Any]
_Send = Callable[[dict[str, Any]], Any]


class TraceRequests:
    """ASGI middleware: a SERVER span per HTTP request, continuing its `traceparent`
    header, named `<method> <route template>` once routing has found the route
    (`route_templates`: the full template of each endpoint, as the app's metrics use).
    Added (outermost) only while tracing is on."""

    def __init__(
        self, app: Callable[..., Any], route_templates: Mapping[object, str] | None = None
    ) -> None:
        self.app = app
        self.route_templates = route_templates or {}

    async def __call__(self, scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        method = scope.get("method", "GET")
        status = 0

        async def observed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with _tracer.start_as_current_span(
            method,
            context=_request_context(scope),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        ) as request_span:
            try:
                await self.app(scope, receive, observed_send)
            finally:
                route = scope.get("route")
                template = self.route_templates.get(
                    getattr(route, "endpoint", None), getattr(route, "path", None)
                )
                if isinstance(template, str):
                    request_span.update_name(f"{method} {template}")
                    request_span.set_attribute("http.route", template)
                if status:
                    request_span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        request_span.set_status(Status(StatusCode.ERROR))


def _request_context(scope: Mapping[str, Any]) -> Context | None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan

    for name, raw in scope.get("headers", ()):
        if name == b"traceparent":
            remote = parse_traceparent(raw.decode("latin-1"))
            if remote is not None:
                return trace.set_span_in_context(NonRecordingSpan(remote))
    return None
