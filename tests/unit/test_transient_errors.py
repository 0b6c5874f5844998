"""Which database errors are waited out (retried) and which are not."""

import asyncpg
import pytest

from service.adapters.database import is_transient


def _postgres_error(sqlstate: str) -> asyncpg.PostgresError:
    error_class = asyncpg.PostgresError.get_message_class_for_sqlstate(sqlstate)
    return error_class("test")


@pytest.mark.parametrize(
    "sqlstate",
    ["08006", "57P01", "53300", "40001", "40P01", "55P03", "57014", "25006"],
)
def test_connection_loss_conflicts_timeouts_and_failover_are_transient(sqlstate) -> None:
    assert is_transient(_postgres_error(sqlstate))


@pytest.mark.parametrize("sqlstate", ["23514", "22003", "42P01", "23505"])
def test_refusals_of_the_data_are_not_transient(sqlstate) -> None:
    assert not is_transient(_postgres_error(sqlstate))


def test_a_value_the_driver_cannot_encode_is_not_retried_forever() -> None:
    assert not is_transient(asyncpg.exceptions._base.DataError("invalid input"))


def test_os_level_connection_errors_are_transient() -> None:
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())


def test_no_pooled_connection_in_time_is_transient() -> None:
    """The pool is busy, not broken: an HTTP request answers 503, the worker retries."""
    from sqlalchemy import exc as sa_exc

    assert is_transient(sa_exc.TimeoutError("QueuePool limit reached"))
