"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.devstack.servers import TansuBroker, free_port
from tests.support.proxy import CuttableProxy
from tests.support.stock_process import ThreadedProxy


@pytest.fixture
def cuttable_broker() -> Iterator[tuple[ThreadedProxy, str]]:
    """A tansu broker of its own that every client reaches through a proxy (it
    advertises the proxy's address): cutting the proxy takes the broker away from
    everyone. Yields the proxy and the bootstrap address."""
    proxy_port = free_port()
    broker = TansuBroker(advertised_port=proxy_port)
    broker.start()
    try:
        proxy = CuttableProxy(tcp_target=("127.0.0.1", broker.port), port=proxy_port)
        with ThreadedProxy(proxy) as threaded:
            yield threaded, f"127.0.0.1:{proxy_port}"
    finally:
        broker.stop()
