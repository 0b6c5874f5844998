"""`stock dev` refuses what it cannot do before it starts or prints anything: one line
on stderr, status 2, nothing created. No server is started by these tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.devstack import stack
from service.devstack.servers import free_port
from service.devstack.stack import DataDirLock, Unapplied
from service.entrypoints.cli import main
from service.settings import Settings


@pytest.fixture(autouse=True)
def _no_stock_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("STOCK_HTTP_PORT", "STOCK_HTTP_HOST", "STOCK_DEV_KAFKA_PORT", "STOCK_DEV_DATA_DIR")
    for name in names:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status = main(["dev", *argv])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stock dev: ")
    return lines[0]


def test_a_busy_http_port_is_named_with_the_flag_and_setting(
    listening: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(
        capsys, "--data-dir", str(tmp_path / "d"), "--http-port", str(listening),
        "--kafka-port", "0",
    )
    assert f"port {listening} (HTTP API)" in line
    assert "--http-port or STOCK_HTTP_PORT" in line
    assert not (tmp_path / "d").exists()


def test_a_busy_http_port_from_the_setting(
    listening: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("STOCK_HTTP_PORT", str(listening))
    line = _refused(capsys, "--data-dir", str(tmp_path / "d"), "--kafka-port", "0")
    assert f"port {listening} (HTTP API)" in line


def test_a_busy_kafka_port_asked_for_is_refused(
    listening: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("STOCK_DEV_KAFKA_PORT", str(listening))
    line = _refused(capsys, "--data-dir", str(tmp_path / "d"), "--http-port", "0")
    assert f"port {listening} (Kafka broker)" in line
    assert "--kafka-port or STOCK_DEV_KAFKA_PORT" in line


def test_a_kafka_port_that_is_not_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("STOCK_DEV_KAFKA_PORT", "abc")
    line = _refused(capsys, "--data-dir", str(tmp_path / "d"), "--http-port", "0")
    assert "STOCK_DEV_KAFKA_PORT='abc' is not a port number" in line


def test_a_port_flag_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(capsys, "--data-dir", str(tmp_path / "d"), "--http-port", "70000")
    assert "--http-port 70000 is not a port number" in line


def test_the_default_broker_port_when_taken_is_replaced_and_said(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "DEFAULT_KAFKA_PORT", listening)
    ports = stack.claim_ports(
        Settings(http_port=0), http_port=None, kafka_port=None, kafka_host="127.0.0.1"
    )
    assert ports.kafka not in (listening, 0)
    assert ports.kafka_note == f"{listening} was taken"
    assert ports.http != 0


def test_a_data_dir_with_a_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(
        capsys, "--data-dir", str(tmp_path / "a b"), "--http-port", "0", "--kafka-port", "0"
    )
    assert "has a space" in line
    assert not (tmp_path / "a b").exists()


def test_a_data_dir_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "d"
    with DataDirLock(data_dir):
        line = _refused(
            capsys, "--data-dir", str(data_dir), "--http-port", str(free_port()),
            "--kafka-port", "0",
        )
    assert f"{data_dir} is in use by another `stock dev`" in line
    assert "--data-dir or STOCK_DEV_DATA_DIR" in line


def test_the_data_dir_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    from service.entrypoints.cli import _parser

    monkeypatch.setenv("STOCK_DEV_DATA_DIR", str(tmp_path / "env"))
    assert _parser().parse_args(["dev"]).data_dir == tmp_path / "env"


def test_the_line_at_ctrl_c() -> None:
    settings = Settings()
    assert Unapplied(records=0, outbox=0).line(settings) is None
    lost = Unapplied(records=7, outbox=2).line(settings)
    assert lost is not None
    assert lost.startswith("stock dev: 7 records on order.checkout, ")
    assert "will be lost" in lost
    assert "2 outbox rows not yet published stay in the database" in lost
    unknown = Unapplied(records=None, outbox=0).line(settings)
    assert unknown is not None and "could not count" in unknown
