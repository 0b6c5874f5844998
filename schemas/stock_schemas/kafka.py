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
than the rule needs. A structured-mode record is read by one `validate_json` call:
pydantic-core parses the bytes straight into the envelope and the `data` model of its
`type` (a union tagged by `type`), with no Python dict in between (a quarter less
CPU per record than parse, envelope, `data`: the worker's docs/design.md, "Consume
loop and cost per event").
Anything that call refuses is read again the long way (parse, envelope, `data`),
which finds the reason to report: the fast path only ever accepts what the long way
accepts, so the rule and its reasons are the long way's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
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


class ParsedEvent:
    """A valid event: its CloudEvent attributes and its `data`, typed.

    `envelope.data` is `data` as it came (parsed JSON); `data` is the same validated
    into the model of `type` (e.g. `OrderCheckout` for `order.checkout`). `type`,
    `source`, `id` and `time` are the envelope's; `envelope` itself is built when first
    asked for (the worker never asks: it reads the four attributes and `data`).
    """

    __slots__ = ("_envelope", "_raw", "data", "id", "source", "time", "type")

    def __init__(
        self,
        envelope: CloudEvent | None,
        data: BaseModel,
        *,
        typed: _TypedEnvelope | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.data = data
        self._envelope = envelope
        self._raw = raw
        attributes: CloudEvent | _TypedEnvelope | None = envelope if envelope is not None else typed
        if attributes is None:
            raise TypeError("ParsedEvent needs its envelope")
        self.type: str = attributes.type
        self.source: str = attributes.source
        self.id: str = attributes.id
        self.time: datetime | None = attributes.time

    @property
    def envelope(self) -> CloudEvent:
        if self._envelope is None:
            # Only structured-mode records take the fast path: the value is the event.
            self._envelope = CloudEvent.model_validate(from_json(self._raw or b"null"))
        return self._envelope

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParsedEvent):
            return NotImplemented
        return (self.envelope, self.data) == (other.envelope, other.data)

    def __hash__(self) -> int:
        return hash((self.type, self.source, self.id))

    def __repr__(self) -> str:
        return f"ParsedEvent(type={self.type!r}, source={self.source!r}, id={self.id!r})"


class _TypedEnvelope(BaseModel):
    """The envelope with `data` typed: base of the one model per accepted `type` that
    the fast path validates a structured-mode value into. Its constraints are
    `CloudEvent`'s (a value refused here is read again the long way, which says why)."""

    model_config = ConfigDict(extra="ignore")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=500)
    source: str = Field(min_length=1, max_length=500)
    time: datetime | None = None
    datacontenttype: str | None = "application/json"
    subject: str | None = None
    # `type` (a Literal per model) and `data` (the model) are added per accepted type.
    type: str
    data: Any


def _literal(value: str) -> Any:
    return Literal[value]


@functools.lru_cache(maxsize=16)
def _structured_reader(models: tuple[tuple[str, type[BaseModel]], ...]) -> TypeAdapter[Any]:
    """One validator for every accepted `type`: a union tagged by `type`, each member an
    envelope whose `data` is that type's model."""
    members: list[Any] = [
        create_model(
            f"Envelope[{name}]",
            __base__=_TypedEnvelope,
            type=(_literal(name), ...),
            data=(model, ...),
        )
        for name, model in models
    ]
    if len(members) == 1:
        return TypeAdapter(members[0])
    tagged: Any = Annotated[Union[tuple(members)], Discriminator("type")]  # noqa: UP007
    return TypeAdapter(tagged)


#: The reader of each `models` mapping seen, by identity (building the key costs).
_READERS: dict[int, tuple[Mapping[str, type[BaseModel]], TypeAdapter[Any]]] = {}


def _read_structured(value: bytes, models: Mapping[str, type[BaseModel]]) -> ParsedEvent | None:
    """The fast path: the event in one `validate_json`, or None (read the long way)."""
    cached = _READERS.get(id(models))
    if cached is not None and cached[0] is models:
        reader = cached[1]
    else:
        try:
            reader = _structured_reader(tuple(models.items()))
        except TypeError:  # not hashable: no fast path, the long way
            return None
        if len(_READERS) < 16:  # the worker passes one mapping; callers a few at most
            _READERS[id(models)] = (models, reader)
    try:
        typed = reader.validate_json(value)
    except (ValidationError, ValueError):
        return None
    return ParsedEvent(None, typed.data, typed=typed, raw=value)


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
    if headers is not None and not isinstance(headers, (list, tuple)):
        headers = tuple(headers)  # read twice below: not a one-shot iterator
    if value is not None and models and not _is_binary(headers):
        parsed = _read_structured(value, models)
        if parsed is not None:
            return parsed
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


def _is_binary(headers: Headers) -> bool:
    return bool(headers) and any(name == _BINARY_SPECVERSION for name, _ in headers or ())


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
