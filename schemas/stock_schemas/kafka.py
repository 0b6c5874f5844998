"""A Kafka record -> a validated event, or `InvalidEvent` with the reason why not.

This is the one home of the rule "what is a valid event on Kafka": the worker's own
consumer (`service/inbound.py`) calls it for every record, and so can any other
consumer. It takes what every Kafka client gives (the value bytes and the headers as
`(name, bytes)` pairs), so it works with aiokafka, confluent-kafka or kafka-python.

Both modes of the CloudEvents Kafka protocol binding are read:

- binary mode, when a `ce_specversion` header is present: the attributes are the
  `ce_*` headers (UTF-8), `content-type` is `datacontenttype`, the value is `data`;
- structured mode otherwise: the value is the whole event as a JSON object.

`data` must be JSON (UTF-8, RFC 8259) and is validated with the model of its
`type`. The worker calls this for every record it consumes, so it does no more work
than the rule needs: one JSON parse (pydantic-core's parser, about twice as fast as
`json.loads`), one envelope validation, one `data` validation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from stock_schemas.envelope import SPECVERSION, CloudEvent
from stock_schemas.events import DATA_MODELS

__all__ = ["InvalidEvent", "ParsedEvent", "parse_record"]

_BINARY_PREFIX = "ce_"
_BINARY_SPECVERSION = _BINARY_PREFIX + "specversion"
_MAX_REASON = 1000

#: A record's headers as Kafka clients give them: `(name, value)` pairs, or None.
Headers = Iterable[tuple[str, bytes | None]] | None


class InvalidEvent(ValueError):
    """The record is not a valid event; `reason` says why, for a person to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """A valid event: its CloudEvent attributes and its `data`, typed.

    `envelope.data` is `data` as it came (parsed JSON); `data` is the same validated
    into the model of `type` (e.g. `OrderCheckout` for `order.checkout`).
    """

    envelope: CloudEvent
    data: BaseModel

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def source(self) -> str:
        return self.envelope.source

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def time(self) -> datetime | None:
        return self.envelope.time


def parse_record(
    value: bytes | None,
    headers: Headers = None,
    *,
    models: Mapping[str, type[BaseModel]] = DATA_MODELS,
) -> ParsedEvent:
    """Read one Kafka record (structured or binary mode) into a validated event.

    `models` maps each accepted `type` to its `data` model; by default every type of
    the contract, consumed and published (a consumer may pass fewer). Raises
    `InvalidEvent` for anything else: a tombstone, bytes that are not UTF-8 JSON, not
    a CloudEvent 1.0, an unknown `type`, or `data` its model refuses.
    """
    attributes = _attributes(value, headers)
    if "specversion" not in attributes:
        # Required by CloudEvents 1.0; the model's default is for building events.
        raise InvalidEvent("not a CloudEvent: specversion is missing")
    try:
        envelope = CloudEvent.model_validate(attributes)
    except ValidationError as error:
        raise InvalidEvent("not a CloudEvent: " + _summarize(error)) from None
    if envelope.specversion != SPECVERSION:
        raise InvalidEvent(f"unsupported CloudEvents specversion {envelope.specversion!r}")
    model = models.get(envelope.type)
    if model is None:
        raise InvalidEvent(f"unknown event type {envelope.type!r}")
    try:
        data = model.model_validate(envelope.data)
    except ValidationError as error:
        raise InvalidEvent(f"invalid data for {envelope.type}: " + _summarize(error)) from None
    return ParsedEvent(envelope, data)


def _attributes(value: bytes | None, headers: Headers) -> dict[str, Any]:
    """The event's attributes, `data` among them, from either binding mode."""
    if headers:
        named = dict(headers)
        if _BINARY_SPECVERSION in named:
            return _binary_attributes(value, named)
    document = _json(value, "value")
    if not isinstance(document, dict):
        raise InvalidEvent(f"value is JSON {_json_kind(document)}, not a CloudEvent object")
    return document


def _binary_attributes(value: bytes | None, headers: dict[str, bytes | None]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, raw in headers.items():
        if name.startswith(_BINARY_PREFIX):
            attribute = name[len(_BINARY_PREFIX) :]
        elif name.lower() == "content-type":
            attribute = "datacontenttype"
        else:
            continue
        try:
            attributes[attribute] = (raw or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(f"header {name!r} is not UTF-8") from None
    attributes["data"] = _json(value, "value (binary-mode data)")
    return attributes


def _json(raw: bytes | None, what: str) -> Any:
    if raw is None:
        raise InvalidEvent(f"{what} is empty (a tombstone?)")
    try:
        # Decoded explicitly: JSON exchanged between systems is UTF-8 (RFC 8259), and
        # this refuses UTF-16 or Latin-1 with a clear reason.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(f"{what} is not UTF-8 text") from None
    try:
        # pydantic-core's parser: faster than json.loads, refuses lone surrogates
        # (which PostgreSQL could not store) and bounds nesting; every refusal is a
        # ValueError (json.loads also raised plain ValueError for huge integers).
        return from_json(text)
    except ValueError as error:
        raise InvalidEvent(f"{what} is not JSON: {error}") from None


def _json_kind(document: Any) -> str:
    return "null" if document is None else type(document).__name__


def _summarize(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)[:_MAX_REASON]
