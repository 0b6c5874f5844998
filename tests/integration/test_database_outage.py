"""A database that goes away is waited for, not skipped; nothing is lost or doubled."""

import asyncio

import pytest
from sqlalchemy import text

from service.adapters.database import create_engine
from service.adapters.kafka import wait_for_broker
from service.adapters.migrate import refuse_outdated_schema
from service.application.admin import StockAdmin
from service.application.consume import BatchConsumer
from tests.support.invariants import invariant_violations
from tests.support.proxy import CuttableProxy
from tests.support.records import checkout, paid, record_of

pytestmark = pytest.mark.integration


async def test_batch_waits_out_an_outage_then_applies_exactly_once(engine, settings) -> None:
    await StockAdmin(engine, settings).restock("hot", 5, product_id="p")
    proxy = CuttableProxy(settings.database_url)
    await proxy.start()
    worker_settings = settings.model_copy(update={"database_url": proxy.url})
    worker_engine = create_engine(proxy.url, pool_size=2)
    consumer = BatchConsumer(worker_engine, worker_settings)
    try:
        # Warm the pool, then take the database away.
        await consumer.handle([record_of(settings, checkout("o0", {"hot": 1}))])
        await proxy.cut()

        batch = [record_of(settings, checkout("o1", {"hot": 2})),
                 record_of(settings, paid("o1"))]
        handling = asyncio.create_task(consumer.handle(batch))
        await asyncio.sleep(1.5)
        assert not handling.done(), "the batch must wait for the database, not give up"

        await proxy.restore()
        report = await asyncio.wait_for(handling, 30)
        assert report.applied == 2

        # The same batch again (as Kafka would redeliver it): nothing changes.
        again = await consumer.handle(batch)
        assert (again.applied, again.duplicates) == (0, 2)
    finally:
        await worker_engine.dispose()
        await proxy.stop()

    async with engine.connect() as conn:
        on_hand, reserved = (
            await conn.execute(
                text("SELECT on_hand, reserved FROM variants WHERE variant_id = 'hot'")
            )
        ).one()
        phases = dict((await conn.execute(text("SELECT order_id, phase FROM orders"))).all())
    assert (on_hand, reserved) == (3, 1)
    assert phases == {"o0": "RESERVED", "o1": "CONFIRMED"}
    assert await invariant_violations(engine) == []


async def test_a_worker_started_during_an_outage_waits_for_the_database(settings) -> None:
    """Found by the fault suite: a worker restarted while PostgreSQL was down exited with
    a traceback from its schema check, and its supervisor had to crash-loop it."""
    proxy = CuttableProxy(settings.database_url)
    await proxy.start()
    await proxy.cut()
    engine = create_engine(proxy.url, pool_size=1)
    try:
        checking = asyncio.create_task(refuse_outdated_schema(engine, max_backoff=0.2))
        await asyncio.sleep(1.0)
        assert not checking.done(), "the start must wait for the database, not exit"
        await proxy.restore()
        await asyncio.wait_for(checking, 10)  # schema at head: returns, no SystemExit
    finally:
        await engine.dispose()
        await proxy.stop()


async def test_a_worker_started_during_a_broker_outage_waits_for_it(settings) -> None:
    """The same for the broker: nothing listens yet, then it comes up."""
    from service.devstack.servers import TansuBroker, free_port

    port = free_port()
    broker_settings = settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{port}",
            "retry_initial_backoff_seconds": 0.1,
            "retry_max_backoff_seconds": 0.3,
        }
    )
    waiting = asyncio.create_task(wait_for_broker(broker_settings))
    await asyncio.sleep(1.0)
    assert not waiting.done(), "the start must wait for the broker, not exit"
    broker = TansuBroker(port=port)
    await asyncio.to_thread(broker.start)
    try:
        await asyncio.wait_for(waiting, 20)
    finally:
        broker.stop()
