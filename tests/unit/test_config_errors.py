"""Configuration errors in the user's words (issue 11, item 3): a bad `STOCK_*` value is
one line naming the variable, the value's problem and what is accepted, status 2, no
traceback; an unknown `STOCK_*` variable is a warning with the closest setting."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import pytest

from service.config_errors import (
    ConfigurationError,
    describe_database_error,
    hide_password,
    load_settings,
    unknown_variables,
)
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
STOCK = Path(sys.executable).parent / "stock"


def stock(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `stock` in a process of its own, with only these STOCK_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    return subprocess.run(
        [str(STOCK), *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("STOCK_"):
            monkeypatch.delenv(name)
    return monkeypatch


# ------------------------------------------------------- real processes, as users see it


@pytest.mark.parametrize(
    ("variable", "value", "problem", "accepted"),
    [
        ("STOCK_HTTP_PORT", "abc", "not a whole number", "a whole number from 0 to 65535"),
        ("STOCK_HTTP_PORT", "70000", "too large", "a whole number from 0 to 65535"),
        ("STOCK_LOG_LEVEL", "LOUD", "not a log level", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (
            "STOCK_KAFKA_SECURITY_PROTOCOL",
            "TLS",
            "not accepted",
            "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
        ),
        ("STOCK_DATABASE_URL", "mysql://x", "not a PostgreSQL URL", "postgresql://"),
        ("STOCK_DATABASE_URL", "not a url", "not a URL", "postgresql://"),
        ("STOCK_KAFKA_ENABLE_IDEMPOTENCE", "maybe", "neither true nor false", "true or false"),
        ("STOCK_SWEEP_INTERVAL_SECONDS", "-1", "too small", "a number above 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_with_status_2(
    variable: str, value: str, problem: str, accepted: str
) -> None:
    result = stock("docs", "asyncapi", **{variable: value})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"stock: {variable}={value!r}: {problem}"), line
    assert f"expected {accepted}" in line or accepted in line, line
    assert "Traceback" not in result.stderr
    field = variable.removeprefix("STOCK_").lower()
    assert field not in line.replace(variable, ""), "the field name is not the user's word"


def test_every_bad_value_is_reported_not_only_the_first() -> None:
    result = stock("docs", "asyncapi", STOCK_HTTP_PORT="abc", STOCK_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    named = {line.split("=")[0] for line in lines}
    assert named == {"stock: STOCK_HTTP_PORT", "stock: STOCK_LOG_LEVEL"}


def test_the_password_of_a_bad_database_url_is_not_printed() -> None:
    result = stock("migrate", STOCK_DATABASE_URL="postgresql://u:s3cret@db:port/stock")
    assert result.returncode == 2
    assert "s3cret" not in result.stderr
    assert "STOCK_DATABASE_URL='postgresql://u:***@db:port/stock'" in result.stderr


def test_an_unknown_variable_is_warned_about_once_with_the_closest_setting() -> None:
    result = stock(
        "docs",
        "asyncapi",
        STOCK_HTTP_PROT="8001",
        STOCK_FOO="1",
        # Read by the project, though not settings: never warned about.
        STOCK_TEST_DATABASE_URL="postgresql://x",
        STOCK_FAILPOINTS="",
        STOCK_TOKEN="t",
        STOCK_DEV_KAFKA_PORT="9092",
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "unknown setting" in line]
    assert len(warnings) == 2, result.stderr
    assert any(
        line.endswith("unknown setting STOCK_HTTP_PROT; did you mean STOCK_HTTP_PORT?")
        for line in warnings
    ), warnings
    assert any("unknown setting STOCK_FOO" in line for line in warnings), warnings
    assert '"asyncapi"' in result.stdout, "the command still ran"


def test_log_level_takes_real_levels_in_any_case(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STOCK_LOG_LEVEL", "warning")
    assert load_settings().log_level == "WARNING"
    for bad in ("LOUD", "WARN", "10", ""):
        clean_env.setenv("STOCK_LOG_LEVEL", bad)
        with pytest.raises(ConfigurationError):
            load_settings()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgres://u:p@db/stock",
        "postgresql+asyncpg://u@db:6432/stock",
        "postgresql://user@/stock?host=/var/run/postgresql",
    ],
)
def test_the_database_url_forms_database_py_connects_with_are_taken(
    clean_env: pytest.MonkeyPatch, url: str
) -> None:
    clean_env.setenv("STOCK_DATABASE_URL", url)
    assert load_settings().database_url == url


def test_protocol_and_mechanism_in_any_case(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STOCK_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    clean_env.setenv("STOCK_KAFKA_SASL_MECHANISM", "scram-sha-512")
    clean_env.setenv("STOCK_KAFKA_SASL_USERNAME", "u")
    clean_env.setenv("STOCK_KAFKA_SASL_PASSWORD", "p")
    settings = load_settings()
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )


# ------------------------------------------- every setting, including ones added later


def _wrong_value(annotation: object) -> str | None:
    """A value the field's type refuses, or None for free text."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else None
    if get_origin(annotation) is Literal or annotation in (bool, int, float):
        return "not-a-value"
    return None


@pytest.mark.parametrize(
    "field",
    sorted(f for f, info in Settings.model_fields.items() if _wrong_value(info.annotation)),
)
def test_each_setting_is_reported_by_its_variable(
    clean_env: pytest.MonkeyPatch, field: str
) -> None:
    variable = f"STOCK_{field.upper()}"
    clean_env.setenv(variable, "not-a-value")
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    [line] = refused.value.lines
    assert line.startswith(f"{variable}='not-a-value': "), line
    assert "; expected " in line, line


def test_unknown_variables_skip_settings_and_the_projects_own() -> None:
    environ = {
        "STOCK_HTTP_PORT": "1",
        "stock_log_level": "info",  # pydantic-settings reads names in any case
        "STOCK_DATABSE_URL": "x",
        "STOCK_TEST_KAFKA_BOOTSTRAP_SERVERS": "x",
        "STOCK_FAULT_SEED": "1",
        "STOCKS": "not ours",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [
        "unknown setting STOCK_DATABSE_URL; did you mean STOCK_DATABASE_URL?"
    ]


def test_hide_password_hides_it_even_in_a_malformed_url() -> None:
    assert hide_password("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "pw" not in hide_password("postgresql://u:pw@h:notaport/db")
    assert "pw" not in hide_password("u:pw@h/db")


def test_a_database_error_that_is_not_about_connecting_is_left_alone() -> None:
    assert describe_database_error(ValueError("boom"), "postgresql://h/db") is None
    refused = describe_database_error(ConnectionRefusedError(111, "refused"), "postgresql://h/db")
    assert refused is not None and "connection refused" in refused[0]
