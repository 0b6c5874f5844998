"""STOCK_KAFKA_SECURITY_* reach every Kafka client, and the password shows nowhere."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from service.adapters.kafka import create_producer, kafka_client_options, kafka_security
from service.entrypoints.worker import build_broker
from service.settings import Settings

SASL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "stock",
    "kafka_sasl_password": "s3cret-pw",
}


def test_plaintext_by_default_adds_nothing() -> None:
    settings = Settings()
    assert kafka_security(settings) is None
    assert kafka_client_options(settings) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_options(protocol: str, mechanism: str) -> None:
    settings = Settings(
        **{**SASL, "kafka_security_protocol": protocol, "kafka_sasl_mechanism": mechanism}
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == protocol
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "stock"
    assert options["sasl_plain_password"] == "s3cret-pw"
    assert isinstance(options["ssl_context"], ssl.SSLContext) == (protocol == "SASL_SSL")


def test_tls_alone() -> None:
    options = kafka_client_options(Settings(kafka_security_protocol="SSL"))
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


def test_sasl_without_credentials_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="STOCK_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT")


async def test_the_relay_producer_gets_them() -> None:  # aiokafka wants a running loop
    producer = create_producer(Settings(**SASL))
    client = producer.client
    assert (client._security_protocol, client._sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert client._sasl_plain_username == "stock"


def test_the_consumer_broker_gets_them() -> None:
    broker = build_broker(Settings(**SASL), consumer=None)  # type: ignore[arg-type]
    connection = broker._connection_kwargs  # what FastStream will hand aiokafka
    assert (connection["security_protocol"], connection["sasl_mechanism"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )


def test_the_password_shows_in_no_settings_dump() -> None:
    settings = Settings(**SASL, api_tokens="token-xyz")
    for text in (repr(settings), str(settings.model_dump()), settings.model_dump_json()):
        assert "s3cret-pw" not in text
        assert "token-xyz" not in text
