"""Configuration errors in the user's words.

Settings are `STOCK_*` environment variables; pydantic reports a bad one by its field
name (`http_port`) with a traceback. Here each problem becomes one line naming the
variable (`STOCK_HTTP_PORT`), what is wrong with its value and what is accepted, and a
`STOCK_*` variable that is no setting (a likely typo) is named with the closest one.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import socket
import types
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import SettingsError

from service.settings import Settings

ENV_PREFIX = str(Settings.model_config.get("env_prefix") or "STOCK_")

#: `STOCK_*` variables the project reads that are not settings: the dev stack's,
#: fault injection's, the README's shell variable for the API token, the tests'.
NOT_SETTINGS = frozenset({"STOCK_DEV_KAFKA_PORT", "STOCK_FAILPOINTS", "STOCK_TOKEN"})
NOT_SETTINGS_PREFIXES = ("STOCK_TEST_", "STOCK_DEV_", "STOCK_FAULT_", "STOCK_BENCH_")

#: A value longer than this is shown cut, so that one error stays one line.
_SHOWN_CHARS = 80

_PROBLEMS = {
    "int_parsing": "not a whole number",
    "int_type": "not a whole number",
    "int_from_float": "not a whole number",
    "float_parsing": "not a number",
    "float_type": "not a number",
    "finite_number": "not a finite number",
    "bool_parsing": "neither true nor false",
    "bool_type": "neither true nor false",
    "greater_than": "too small",
    "greater_than_equal": "too small",
    "less_than": "too large",
    "less_than_equal": "too large",
    "literal_error": "not accepted",
    "string_type": "not text",
}


class ConfigurationError(Exception):
    """Invalid settings; `lines` says each problem in the user's words."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_settings() -> Settings:
    """`Settings()` from the environment, or `ConfigurationError`."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigurationError(describe_validation_error(error, os.environ)) from None
    except SettingsError as error:
        raise ConfigurationError([describe_settings_error(error)]) from None


def env_name(field: str) -> str:
    """The environment variable of a settings field: `http_port` -> `STOCK_HTTP_PORT`."""
    return f"{ENV_PREFIX}{field}".upper()


def describe_validation_error(
    error: ValidationError, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line per invalid setting; the value shown is the one in `environ` (as the
    user wrote it) where it came from there."""
    given = {name.upper(): value for name, value in (environ or {}).items()}
    lines = []
    for problem in error.errors(include_url=False):
        cause = (problem.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, Exception) else problem["msg"]
        if not problem["loc"]:  # a rule across settings: its message names them
            lines.append(message)
            continue
        field = str(problem["loc"][0])
        value = given.get(env_name(field), problem.get("input"))
        shown = f"{env_name(field)}={_shown(field, value)}"
        if isinstance(cause, Exception):  # a validator of ours: it says what is accepted
            lines.append(f"{shown}: {message}")
            continue
        what = _PROBLEMS.get(problem["type"], _lower_first(message))
        accepted = _accepted(Settings.model_fields.get(field))
        lines.append(f"{shown}: {what}" + (f"; expected {accepted}" if accepted else ""))
    return lines


def describe_settings_error(error: SettingsError) -> str:
    """pydantic-settings could not even read a value (a list or a mapping that is not JSON)."""
    found = re.search(r'field "([^"]+)"', str(error))
    if found is None:
        return str(error)
    cause = error.__cause__
    why = f" ({_lower_first(str(cause).splitlines()[0])})" if cause and str(cause) else ""
    return f"{env_name(found.group(1))}: could not be read{why}; expected a JSON value"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for every `STOCK_*` variable that is no setting, with the likeliest
    setting meant when one is close."""
    known = {env_name(field) for field in Settings.model_fields}
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or _not_a_setting(upper):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        if close:
            warnings.append(f"unknown setting {name}; did you mean {close[0]}?")
        else:
            warnings.append(f"unknown setting {name}: no setting has that name; it is ignored")
    return warnings


def hide_password(url: str) -> str:
    """A database URL fit to print: its password replaced by `***`, however malformed."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r":[^:@/\s]*@", ":***@", url)


def describe_database_error(error: BaseException, url: str) -> list[str] | None:
    """What went wrong reaching the database of `url`, in one line and a hint, when
    `error` is about connecting to it (unreachable, missing, the login refused, no
    schema yet); None for anything else."""
    where = hide_password(url)
    host, database, user = _url_parts(url)
    for cause in _causes(error):
        sqlstate = getattr(cause, "sqlstate", None)
        message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if sqlstate == "3D000":
            return [
                f"cannot use {where}: {message}",
                f"hint: create it (createdb {database or user or 'NAME'}, or CREATE DATABASE) "
                "or name another one in STOCK_DATABASE_URL",
            ]
        if sqlstate in ("28000", "28P01"):
            return [
                f"cannot use {where}: PostgreSQL refused the login ({message})",
                f"hint: check the user ({user or 'none given'}) and password in "
                "STOCK_DATABASE_URL, and the server's pg_hba.conf",
            ]
        if sqlstate == "42P01":
            return [
                f"cannot use {where}: the stock tables are missing ({message})",
                "hint: run `stock migrate` against this database first",
            ]
        if sqlstate == "57P03" or (sqlstate or "").startswith(("08", "53")):
            return [
                f"cannot use {where}: {message}",
                "hint: the server is starting, stopping or overloaded; try again shortly",
            ]
        if isinstance(cause, socket.gaierror):
            return [
                f"cannot reach {where}: unknown host {host!r} ({cause.strerror or cause})",
                "hint: check the host name in STOCK_DATABASE_URL",
            ]
        if isinstance(cause, TimeoutError):
            return [
                f"cannot reach {where}: no answer from {host or 'the server'}",
                "hint: check the host and port in STOCK_DATABASE_URL and any firewall between",
            ]
        if isinstance(cause, OSError):
            refused = isinstance(cause, ConnectionRefusedError) or (
                f"[Errno {errno.ECONNREFUSED}]" in message
            )
            return [
                f"cannot reach {where}: "
                + ("connection refused" if refused else (cause.strerror or message).lower()),
                "hint: is PostgreSQL running and listening there? "
                "STOCK_DATABASE_URL names the server",
            ]
    return None


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps: SQLAlchemy's `orig`, then `__cause__`/`__context__`."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        cause = pending.pop(0)
        if cause is None or any(cause is seen for seen in found):
            continue
        found.append(cause)
        orig = getattr(cause, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None]
        pending += [cause.__cause__, cause.__context__]
    return found


def _url_parts(url: str) -> tuple[str | None, str | None, str | None]:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None, None, None
    return parsed.host, parsed.database, parsed.username


def _not_a_setting(name: str) -> bool:
    return name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES)


def _shown(field: str, value: Any) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and _is_secret(info.annotation):
        return "(hidden)"
    if isinstance(value, SecretStr):
        return "(hidden)"
    text = value if isinstance(value, str) else str(value)
    if field == "database_url":
        text = hide_password(text)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return repr(text)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


def _accepted(info: FieldInfo | None) -> str | None:
    """What the field takes, in words, from its type and bounds."""
    if info is None:
        return None
    annotation = info.annotation
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        if len(members) != 1:
            return None
        annotation = members[0]
    if get_origin(annotation) is Literal:
        described = "one of " + ", ".join(str(a) for a in get_args(annotation))
    elif annotation is bool:
        described = "true or false (1/0, yes/no and on/off also work)"
    elif annotation is int:
        described = "a whole number" + _bounds(info.metadata)
    elif annotation is float:
        described = "a number" + _bounds(info.metadata)
    else:
        return None
    return described + (", or nothing" if optional else "")


def _bounds(metadata: Iterable[Any]) -> str:
    rules = {type(rule).__name__: rule for rule in metadata}
    ge, gt, le, lt = (rules.get(name) for name in ("Ge", "Gt", "Le", "Lt"))
    if isinstance(ge, annotated_types.Ge) and isinstance(le, annotated_types.Le):
        return f" from {ge.ge} to {le.le}"
    words = []
    if isinstance(ge, annotated_types.Ge):
        words.append(f"of at least {ge.ge}")
    if isinstance(gt, annotated_types.Gt):
        words.append(f"above {gt.gt}")
    if isinstance(le, annotated_types.Le):
        words.append(f"of at most {le.le}")
    if isinstance(lt, annotated_types.Lt):
        words.append(f"below {lt.lt}")
    return "".join(f" {w}" for w in words[:1]) + "".join(f" and {w}" for w in words[1:])


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
