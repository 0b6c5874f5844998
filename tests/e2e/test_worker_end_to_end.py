"""The real worker against the real broker and the real PostgreSQL: CONTRACT.md end to end."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from sqlalchemy import text
from stock_schemas import StockChanged, StockLow, StockReservation

from service.adapters.kafka import ensure_topics
from service.application.admin import StockAdmin
from tests.e2e.helpers import (
    WAIT,
    caught_up,
    committed_offsets,
    dead_letter_count,
    end_offsets,
    outbox_drained,
    phases,
    processed_count,
    processed_ids,
    published_counts,
    reservations_of,
    running_worker,
    scalar,
    send,
    send_events,
    snapshot,
    statuses_by_order,
    stock,
    versions,
    wait_until,
)
from tests.support.invariants import invariant_violations, published_change_violations
from tests.support.kafka import TopicReader, structured
from tests.support.records import cancelled, checkout, event, paid, payment_failed

pytestmark = [pytest.mark.e2e]

TEE, MUG, CAP, PEN = "tee-red-m", "mug-blue", "cap-black", "pen-green"


def _topics(settings: Any) -> list[str]:
    return [*settings.published_topics]


async def _seed(engine: Any, settings: Any, stock_by_variant: dict[str, int]) -> None:
    admin = StockAdmin(engine, settings)
    for variant_id, quantity in stock_by_variant.items():
        await admin.restock(variant_id, quantity, product_id=f"prod-{variant_id}", reference="seed")


def _has(reader: TopicReader, topic: str, order_id: str, status: str) -> bool:
    return any(d["order_id"] == order_id and d["status"] == status for d in reader.data(topic))


async def _all_published(engine: Any, reader: TopicReader, settings: Any) -> None:
    """Outbox drained and every change in the database seen on stock.changed."""
    await wait_until(lambda: outbox_drained(engine), what="outbox drained")
    expected = sum((await versions(engine)).values())
    await reader.wait_for(
        lambda: len(reader.messages[settings.topic_stock_changed]) >= expected,
        timeout=WAIT,
        what=f"{expected} stock.changed messages",
    )


# ------------------------------------------------------------------------------ a) flows


async def test_contract_flows_through_the_broker(kafka_settings, engine) -> None:
    s = kafka_settings
    res_topic, changed_topic = s.topic_stock_reservation, s.topic_stock_changed
    await _seed(engine, s, {TEE: 12, MUG: 5, CAP: 2, PEN: 10})

    a = checkout("A", {TEE: 2, MUG: 1})
    b = checkout("B", {TEE: 1})
    c = checkout("C", {MUG: 2})
    d = checkout("D", {TEE: 3})
    e = checkout("E", {TEE: 1, "ghost": 1})
    f = checkout("F", {CAP: 5})
    g_paid = paid("G")
    g = checkout("G", {CAP: 1})
    dup = checkout("I", {TEE: 4})
    j_cancel, j = cancelled("J"), checkout("J", {TEE: 1})
    k_failed, k = payment_failed("K"), checkout("K", {MUG: 1})
    # One variant on two lines: the contract lets the project sum or reject; it sums.
    repeated = event(
        "order.checkout",
        {
            "order_id": "L",
            "lines": [{"variant_id": PEN, "quantity": 1}, {"variant_id": PEN, "quantity": 2}],
        },
    )
    binary_id = "binary-checkout-1"
    binary = (
        s.topic_order_checkout,
        b"H",
        json.dumps({"order_id": "H", "lines": [{"variant_id": MUG, "quantity": 1}]}).encode(),
        [
            ("ce_specversion", b"1.0"),
            ("ce_id", binary_id.encode()),
            ("ce_source", b"binary-producer"),
            ("ce_type", b"order.checkout"),
            ("ce_time", datetime.now(UTC).isoformat().encode()),
            ("content-type", b"application/json"),
        ],
    )

    async with (
        running_worker(s) as (_worker, consumed),
        TopicReader(s.kafka_bootstrap_servers, _topics(s)) as reader,
    ):
        # Phase 1: every checkout (one twice, one in binary mode), and the events that
        # come before their checkout: G's payment, J's cancel, K's failed payment.
        await send_events(s, [a, b, c, d, e, f, dup, dup, g_paid, j_cancel, k_failed, repeated])
        await send(s.kafka_bootstrap_servers, [binary])
        await reader.wait_for(
            lambda: all(
                statuses_by_order(reader.messages[res_topic]).get(o)
                for o in ("A", "B", "C", "D", "E", "F", "H", "I", "L")
            ),
            timeout=WAIT,
            what="a first outcome for every checkout",
        )
        early = {(ev["source"], ev["id"]) for ev in (g_paid, j_cancel, k_failed)}
        await wait_until(
            lambda: _contains_all(engine, early),
            what="G's payment, J's cancel and K's failure consumed before their checkouts",
        )
        assert {"G", "J", "K"}.isdisjoint(statuses_by_order(reader.messages[res_topic]))

        # Phase 2: what follows each checkout, and the late checkouts.
        await send_events(s, [paid("A"), payment_failed("B"), cancelled("C"), paid("D"), g, j, k])
        await reader.wait_for(
            lambda: (
                _has(reader, res_topic, "A", "CONFIRMED")
                and _has(reader, res_topic, "B", "RELEASED")
                and _has(reader, res_topic, "C", "RELEASED")
                and _has(reader, res_topic, "D", "CONFIRMED")
                and _has(reader, res_topic, "G", "CONFIRMED")
                and _has(reader, res_topic, "J", "REJECTED")
                and _has(reader, res_topic, "K", "RELEASED")
            ),
            timeout=WAIT,
            what="phase 2 outcomes",
        )

        # Phase 3: D is cancelled after its payment; I's checkout is delivered a third time.
        resent = await send_events(s, [cancelled("D"), dup])
        await reader.wait_for(
            lambda: _has(reader, res_topic, "D", "RETURNED"), timeout=WAIT, what="D RETURNED"
        )
        await wait_until(
            lambda: (
                (resent[1].topic, resent[1].partition, resent[1].offset) in consumed.positions()
            ),
            what="the third delivery of I's checkout consumed",
        )

        # Phase 4: events for settled orders. A second payment for the RETURNED order is
        # answered CONFIRM_FAILED; the rest change nothing and publish nothing.
        late = [paid("D"), payment_failed("A"), cancelled("B"), checkout("A", {TEE: 1})]
        await send_events(s, late)
        await reader.wait_for(
            lambda: _has(reader, res_topic, "D", "CONFIRM_FAILED"),
            timeout=WAIT,
            what="D's second payment answered",
        )
        await wait_until(
            lambda: _contains_all(engine, {(ev["source"], ev["id"]) for ev in late}),
            what="phase 4 consumed",
        )
        await _all_published(engine, reader, s)
        await reader.wait_for(
            lambda: len(reader.messages[s.topic_stock_low]) >= 1,
            timeout=WAIT,
            what="stock.low for the tee",
        )

        statuses = statuses_by_order(reader.messages[res_topic])
        assert statuses == {
            "A": ["RESERVED", "CONFIRMED"],
            "B": ["RESERVED", "RELEASED"],
            "C": ["RESERVED", "RELEASED"],
            "D": ["RESERVED", "CONFIRMED", "RETURNED", "CONFIRM_FAILED"],
            "E": ["REJECTED"],
            "F": ["REJECTED"],
            "G": ["RESERVED", "CONFIRMED"],
            "H": ["RESERVED"],
            "I": ["RESERVED"],
            "J": ["REJECTED"],
            "K": ["RELEASED"],
            "L": ["RESERVED"],
        }
        (l_out,) = reservations_of(reader.messages[res_topic], "L")
        assert l_out["lines"] == [{"variant_id": PEN, "quantity": 3}]
        for record in reader.messages[res_topic]:
            envelope = json.loads(record.value)
            assert envelope["specversion"] == "1.0"
            assert envelope["type"] == "stock.reservation"
            assert envelope["source"] == s.event_source
            assert envelope["datacontenttype"] == "application/json"
            assert record.key == envelope["data"]["order_id"].encode()
            StockReservation.model_validate(envelope["data"])

        (e_out,) = reservations_of(reader.messages[res_topic], "E")
        assert e_out["reason"] == "unknown_variant"
        assert {"variant_id": "ghost", "requested": 1, "available": 0} in e_out["shortages"]
        assert {sh["variant_id"] for sh in e_out["shortages"]} == {"ghost"}
        (f_out,) = reservations_of(reader.messages[res_topic], "F")
        assert f_out["reason"] == "insufficient_stock"
        assert f_out["shortages"] == [{"variant_id": CAP, "requested": 5, "available": 2}]
        assert f_out["lines"] == [{"variant_id": CAP, "quantity": 5}]
        b_out = reservations_of(reader.messages[res_topic], "B")[-1]
        assert b_out["reason"] == "payment_failed"
        c_out = reservations_of(reader.messages[res_topic], "C")[-1]
        assert c_out["reason"] == "order_cancelled"
        (j_out,) = reservations_of(reader.messages[res_topic], "J")
        assert j_out["reason"] == "order_cancelled"
        (k_out,) = reservations_of(reader.messages[res_topic], "K")
        assert k_out["reason"] == "payment_failed"
        d_out = reservations_of(reader.messages[res_topic], "D")[-1]
        assert d_out["reason"] == "order_cancelled"
        db_phases = await phases(engine)
        assert db_phases["D"] == "RETURNED"  # the stock's truth; the answer was CONFIRM_FAILED
        assert {o: db_phases[o] for o in "ABCEFGHIJK"} == {
            "A": "CONFIRMED",
            "B": "RELEASED",
            "C": "RELEASED",
            "E": "REJECTED",
            "F": "REJECTED",
            "G": "CONFIRMED",
            "H": "RESERVED",
            "I": "RESERVED",
            "J": "REJECTED",
            "K": "RELEASED",
        }
        h_out = reservations_of(reader.messages[res_topic], "H")[0]
        assert h_out["lines"] == [{"variant_id": MUG, "quantity": 1}]

        # stock.changed: what each variant went through.
        changes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in reader.messages[changed_topic]:
            envelope = json.loads(record.value)
            data = envelope["data"]
            StockChanged.model_validate(data)
            assert envelope["type"] == "stock.changed"
            assert record.key == data["variant_id"].encode()
            assert data["available"] == data["on_hand"] - data["reserved"]
            assert data["product_id"] == f"prod-{data['variant_id']}"
            changes[data["variant_id"]].append(data)
        seen = {
            v: Counter(
                (c["change_type"], c["reference"], c["delta_on_hand"], c["delta_reserved"])
                for c in cs
            )
            for v, cs in changes.items()
        }
        assert seen == {
            TEE: Counter(
                {
                    ("RESTOCK", "seed", 12, 0): 1,
                    ("RESERVE", "A", 0, 2): 1,
                    ("RESERVE", "B", 0, 1): 1,
                    ("RESERVE", "D", 0, 3): 1,
                    ("RESERVE", "I", 0, 4): 1,
                    ("SALE", "A", -2, -2): 1,
                    ("RELEASE", "B", 0, -1): 1,
                    ("SALE", "D", -3, -3): 1,
                    ("RETURN", "D", 3, 0): 1,
                }
            ),
            MUG: Counter(
                {
                    ("RESTOCK", "seed", 5, 0): 1,
                    ("RESERVE", "A", 0, 1): 1,
                    ("RESERVE", "C", 0, 2): 1,
                    ("RESERVE", "H", 0, 1): 1,
                    ("SALE", "A", -1, -1): 1,
                    ("RELEASE", "C", 0, -2): 1,
                }
            ),
            CAP: Counter(
                {
                    ("RESTOCK", "seed", 2, 0): 1,
                    ("RESERVE", "G", 0, 1): 1,
                    ("SALE", "G", -1, -1): 1,
                }
            ),
            PEN: Counter({("RESTOCK", "seed", 10, 0): 1, ("RESERVE", "L", 0, 3): 1}),
        }
        final = {v: cs[-1] for v, cs in changes.items()}
        db = await stock(engine)
        assert db == {TEE: (10, 4, 9), MUG: (4, 1, 6), CAP: (1, 0, 3), PEN: (10, 3, 2)}
        for variant_id, (on_hand, reserved, version) in db.items():
            last = final[variant_id]
            assert (last["on_hand"], last["reserved"], last["version"]) == (
                on_hand,
                reserved,
                version,
            )

        # stock.low: only the tee crossed the default threshold (5), once.
        lows = reader.data(s.topic_stock_low)
        assert len(lows) == 1
        StockLow.model_validate(lows[0])
        assert lows[0]["variant_id"] == TEE
        assert lows[0]["threshold"] == 5
        assert 0 < lows[0]["available"] <= 5
        assert lows[0]["out_of_stock"] is False

        assert await invariant_violations(engine) == []
        assert (
            published_change_violations(reader.messages[changed_topic], await versions(engine))
            == []
        )
        assert not reader.messages[s.topic_dlq]


async def _contains(engine: Any, ref: tuple[str, str]) -> bool:
    return ref in await processed_ids(engine)


# ---------------------------------------------------------------------------- b) poison


def _headers(record: Any) -> dict[str, bytes]:
    return {name: value for name, value in record.headers}


async def test_poison_goes_to_the_dlq_and_consumption_goes_on(kafka_settings, engine) -> None:
    s = kafka_settings
    await _seed(engine, s, {TEE: 10})
    topic = s.topic_order_checkout
    good = checkout("after-poison", {TEE: 1})
    truncated = structured(checkout("trunc", {TEE: 1}))[:-7]
    bad_header = (
        topic,
        b"bad-header",
        json.dumps({"order_id": "bh", "lines": [{"variant_id": TEE, "quantity": 1}]}).encode(),
        [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"\xff\xfe\xfd not utf-8"),
            ("ce_source", b"binary-producer"),
            ("ce_type", b"order.checkout"),
        ],
    )
    wrong_type = structured(paid("wrong-topic"))
    unknown_type = structured(event("order.shipped", {"order_id": "ship"}))
    bad_data = structured(
        event("order.checkout", {"order_id": "zero", "lines": [{"variant_id": TEE, "quantity": 0}]})
    )
    poisons = [
        (topic, b"random", bytes(range(256)) + b"\x00\xff garbage", None),
        (topic, b"trunc", truncated, None),
        bad_header,
        (topic, b"wrong-topic", wrong_type, None),
        (topic, b"ship", unknown_type, None),
        (topic, b"zero", bad_data, None),
        (topic, b"tombstone", None, None),
        (topic, b"long-id", structured(checkout("o" * 201, {TEE: 1})), None),
        (topic, b"array", b"[1, 2, 3]", None),
        (topic, None, b'{"specversion": "1.0"}', None),
        (
            topic,
            b"binary-bad-value",
            b"\xc3\x28 not json",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"bbv"),
                ("ce_source", b"binary-producer"),
                ("ce_type", b"order.checkout"),
            ],
        ),
    ]
    expected_reason = [
        ("not UTF-8", "not JSON"),
        ("not JSON",),
        ("header 'ce_id' is not UTF-8",),
        ("not accepted on topic",),
        ("unknown event type",),
        ("invalid data for order.checkout",),
        ("empty",),
        ("invalid data for order.checkout: order_id",),
        ("not a CloudEvent",),
        ("not a CloudEvent",),
        ("not UTF-8", "not JSON"),
    ]
    # A valid event carrying a header that is not UTF-8 (not a ce_ attribute): still valid.
    odd_header_ok = (
        topic,
        b"odd-header",
        structured(checkout("odd-header", {TEE: 2})),
        [("x-trace", b"\xff\x00\xfe")],
    )

    async with running_worker(s), TopicReader(s.kafka_bootstrap_servers, _topics(s)) as reader:
        # Everything on one partition, so the valid event comes after every poison.
        sent = await send(
            s.kafka_bootstrap_servers,
            [*poisons, odd_header_ok, (topic, b"after-poison", structured(good), None)],
            partition=0,
        )
        res = s.topic_stock_reservation
        await reader.wait_for(
            lambda: (
                _has(reader, res, "after-poison", "RESERVED")
                and _has(reader, res, "odd-header", "RESERVED")
            ),
            timeout=WAIT,
            what="the valid events after the poison applied",
        )
        await reader.wait_for(
            lambda: len(reader.messages[s.topic_dlq]) >= len(poisons),
            timeout=WAIT,
            what="every poison dead-lettered",
        )
        await _all_published(engine, reader, s)

        dead = reader.messages[s.topic_dlq]
        assert len(dead) == len(poisons)
        by_offset = {int(_headers(r)["offset"]): r for r in dead}
        for original, reason_parts in zip(sent[: len(poisons)], expected_reason, strict=True):
            record = by_offset[original.offset]
            headers = _headers(record)
            assert record.value == original.value  # a tombstone stays null
            assert record.key == original.key
            assert headers["topic"] == original.topic.encode()
            assert headers["partition"] == str(original.partition).encode()
            assert headers["offset"] == str(original.offset).encode()
            reason = headers["reason"].decode("utf-8")
            assert any(part in reason for part in reason_parts), (reason_parts, reason)
            for name, value in original.headers:  # the original headers travel along
                assert (name, value) in record.headers
        assert await stock(engine) == {TEE: (10, 3, 3)}
        assert await invariant_violations(engine) == []
        assert (
            published_change_violations(
                reader.messages[s.topic_stock_changed], await versions(engine)
            )
            == []
        )


async def test_a_tombstone_is_dead_lettered_as_a_tombstone(kafka_settings, engine) -> None:
    s = kafka_settings
    async with (
        running_worker(s),
        TopicReader(s.kafka_bootstrap_servers, [s.topic_dlq]) as reader,
    ):
        (sent,) = await send(
            s.kafka_bootstrap_servers, [(s.topic_order_checkout, b"order-1", None, None)]
        )
        await reader.wait_for(
            lambda: len(reader.messages[s.topic_dlq]) >= 1, timeout=WAIT, what="dead letter"
        )
        (dead,) = reader.messages[s.topic_dlq]
        assert _headers(dead)["offset"] == str(sent.offset).encode()
        assert dead.key == b"order-1"
        assert dead.value is None  # what came in: a tombstone, not an empty message


# --------------------------------------------------------------------------- c) expiry


async def test_short_hold_is_expired_and_a_late_payment_takes_the_stock_again(
    kafka_settings, engine
) -> None:
    s = kafka_settings
    await _seed(engine, s, {TEE: 5, MUG: 2})
    res = s.topic_stock_reservation
    async with running_worker(s), TopicReader(s.kafka_bootstrap_servers, _topics(s)) as reader:
        # A normal hold first: the group has joined once it is answered.
        await send_events(s, [checkout("warm", {TEE: 1})])
        await reader.wait_for(lambda: _has(reader, res, "warm", "RESERVED"), what="warm-up")

        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        await send_events(
            s, [checkout("X", {TEE: 3}, expires_at=soon), checkout("Y", {MUG: 2}, expires_at=soon)]
        )
        await reader.wait_for(
            lambda: _has(reader, res, "X", "EXPIRED") and _has(reader, res, "Y", "EXPIRED"),
            timeout=WAIT,
            what="the short holds EXPIRED by the sweeper",
        )
        assert datetime.now(UTC) >= soon
        assert statuses_by_order(reader.messages[res])["X"] == ["RESERVED", "EXPIRED"]
        assert reservations_of(reader.messages[res], "X")[-1]["reason"] == "hold_expired"
        await _all_published(engine, reader, s)
        expire = [
            d
            for d in reader.data(s.topic_stock_changed)
            if d["change_type"] == "EXPIRE" and d["reference"] == "X"
        ]
        assert len(expire) == 1
        assert (expire[0]["delta_on_hand"], expire[0]["delta_reserved"]) == (0, -3)
        assert (await stock(engine))[TEE][:2] == (5, 1)

        # Y's units go to Z meanwhile; X's are still free.
        await send_events(s, [checkout("Z", {MUG: 2})])
        await reader.wait_for(lambda: _has(reader, res, "Z", "RESERVED"), what="Z RESERVED")
        await send_events(s, [paid("X"), paid("Y")])
        await reader.wait_for(
            lambda: (
                _has(reader, res, "X", "CONFIRMED") and _has(reader, res, "Y", "CONFIRM_FAILED")
            ),
            timeout=WAIT,
            what="late payments answered",
        )
        await _all_published(engine, reader, s)

        assert statuses_by_order(reader.messages[res])["X"] == ["RESERVED", "EXPIRED", "CONFIRMED"]
        y_last = reservations_of(reader.messages[res], "Y")[-1]
        assert y_last["reason"] == "insufficient_stock"
        assert y_last["shortages"] == [{"variant_id": MUG, "requested": 2, "available": 0}]
        sale = [
            d
            for d in reader.data(s.topic_stock_changed)
            if d["change_type"] == "SALE" and d["reference"] == "X"
        ]
        assert len(sale) == 1
        assert (sale[0]["delta_on_hand"], sale[0]["delta_reserved"]) == (-3, 0)
        assert await stock(engine) == {TEE: (2, 1, 5), MUG: (2, 2, 4)}
        assert await invariant_violations(engine) == []
        assert (
            published_change_violations(
                reader.messages[s.topic_stock_changed], await versions(engine)
            )
            == []
        )


# ------------------------------------------------------- d) offsets and exactly-once effects


async def test_offsets_follow_the_database_and_a_replay_changes_nothing(
    kafka_settings, engine
) -> None:
    s = kafka_settings
    consumed_topics = list(s.consumed_topics)
    await _seed(engine, s, {TEE: 10, MUG: 3, "marker": 100})
    first_events = [
        checkout("P1", {TEE: 2}),
        checkout("P2", {TEE: 1, MUG: 1}),
        checkout("P3", {MUG: 5}),
        checkout("P4", {TEE: 3}),
        paid("P1"),
        payment_failed("P2"),
        cancelled("P4"),
        paid("P5"),  # no checkout yet: remembered
    ]
    poison = (s.topic_order_checkout, b"junk", b"{not json", None)
    sent_total = 0

    await ensure_topics(s)  # what worker.start() does first; the reader needs the topics
    reader = await TopicReader(s.kafka_bootstrap_servers, _topics(s)).__aenter__()
    try:
        # Run 1: apply, then stop.
        async with running_worker(s) as (_w, first_log):
            # While the database cannot commit the batch, no offset may be committed.
            async with engine.connect() as blocker:
                await blocker.begin()
                await blocker.execute(text("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE"))
                sent_total += len(await send_events(s, first_events))
                sent_total += len(await send(s.kafka_bootstrap_servers, [poison]))
                # Each message went alone (send_and_wait), so the high watermarks are exact.
                consumed_ends = await end_offsets(s.kafka_bootstrap_servers, consumed_topics)
                assert sum(consumed_ends.values()) == sent_total
                await wait_until(
                    lambda: _worker_waits_on_a_lock(engine), what="the worker's batch blocked"
                )
                # Long enough for an early commit to show, auto-commit included (aiokafka
                # commits every 5 s by default).
                await asyncio.sleep(6.0)
                assert first_log.reports == []
                assert (
                    await committed_offsets(
                        s.kafka_bootstrap_servers, s.kafka_group_id, consumed_ends
                    )
                    == {}
                )
                await blocker.rollback()
            await wait_until(lambda: _run_one_done(engine, len(first_events)), what="run 1 applied")
            await wait_until(
                lambda: _committed_reach(s, s.kafka_group_id, consumed_ends),
                what="run 1 offsets committed",
            )
            published_after_first = await caught_up(engine, reader)
        after_first = await snapshot(engine)
        assert first_log.total("dead_lettered") == 1
        assert first_log.total("applied") == len(first_events)
        committed = await committed_offsets(
            s.kafka_bootstrap_servers, s.kafka_group_id, consumed_ends
        )
        for tp, end in consumed_ends.items():
            if end:
                assert committed.get(tp) == end, (tp, committed.get(tp), end)

        # Run 2: a new worker in the same group resumes at the committed offsets.
        markers = []
        async with running_worker(s) as (_w, second_log):
            for partition in range(s.kafka_topic_partitions):
                batch = [
                    checkout(f"marker-c{partition}", {"marker": 1}),
                    paid(f"marker-p{partition}"),
                    payment_failed(f"marker-f{partition}"),
                    cancelled(f"marker-x{partition}"),
                ]
                markers += batch
                sent_total += len(await send_events(s, batch, partition=partition))
            marker_refs = {(m["source"], m["id"]) for m in markers}
            await wait_until(
                lambda: _contains_all(engine, marker_refs), what="every marker consumed by run 2"
            )
            published_after_second = await caught_up(engine, reader)
        # Nothing from before the committed offsets was handed to the second worker.
        for topic, partition, offset in second_log.positions():
            assert offset >= consumed_ends[TopicPartition(topic, partition)], (
                topic,
                partition,
                offset,
            )
        assert second_log.total("applied") == len(markers)
        assert second_log.total("duplicates") == 0
        after_second = await snapshot(engine)
        for table in ("variants", "orders", "audit_log", "order_lines"):
            assert _without_markers(after_second[table]) == _without_markers(after_first[table]), (
                table
            )
        res = s.topic_stock_reservation
        # Only the marker checkouts' RESERVED are new on stock.reservation.
        assert published_after_second[res] - published_after_first[res] == len(
            [m for m in markers if m["type"] == "order.checkout"]
        )
        assert published_after_second[s.topic_dlq] == published_after_first[s.topic_dlq] == 1

        # Run 3: a new group re-reads everything from the beginning; nothing changes.
        replay = s.model_copy(update={"kafka_group_id": f"{s.kafka_group_id}-replay"})
        async with running_worker(replay) as (_w, replay_log):
            await wait_until(
                lambda: len(replay_log.records) >= sent_total,
                what=f"the replay to consume all {sent_total} records",
            )
            assert await caught_up(engine, reader) == published_after_second
        assert len(replay_log.records) == sent_total
        assert replay_log.total("applied") == 0
        assert replay_log.total("dead_lettered") == 0
        assert replay_log.total("duplicates") == sent_total
        assert await snapshot(engine) == after_second  # outbox included: nothing new queued
        assert published_counts(reader) == published_after_second
        assert await invariant_violations(engine) == []

        statuses = statuses_by_order(reader.messages[res])
        assert statuses["P1"] == ["RESERVED", "CONFIRMED"]
        assert statuses["P3"] == ["REJECTED"]
        # Its cancel may be consumed before its checkout (another topic): either is right.
        assert statuses["P4"] in (["RESERVED", "RELEASED"], ["REJECTED"])
        assert "P5" not in statuses
        assert (
            published_change_violations(
                reader.messages[s.topic_stock_changed], await versions(engine)
            )
            == []
        )
    finally:
        await reader.__aexit__(None, None, None)


async def _worker_waits_on_a_lock(engine: Any) -> bool:
    waiting = await scalar(
        engine,
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'""",
    )
    return bool(waiting)


def _without_markers(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [row for row in rows if "marker" not in str(row[:3])]


async def _run_one_done(engine: Any, events: int) -> bool:
    """Every event claimed in processed_events, the poison in dead_letters."""
    return await processed_count(engine, "test") >= events and await dead_letter_count(engine) >= 1


async def _contains_all(engine: Any, refs: set[tuple[str, str]]) -> bool:
    return refs <= await processed_ids(engine)


async def _committed_reach(s: Any, group: str, ends: dict[TopicPartition, int]) -> bool:
    committed = await committed_offsets(s.kafka_bootstrap_servers, group, ends)
    return all(committed.get(tp, 0) >= end for tp, end in ends.items() if end)
