"""A stream subscriber's bounded buffer, and the bearer-token comparison.

`Subscription` is what one /api/inventory/stream client reads from: it keeps the
changes it wants, in order, up to its capacity; a client that falls further behind
is cut off (SubscriberTooSlow) and a stopping process ends every stream (FeedClosed).
No broker is involved: changes are offered by hand, as the feed would.
"""

from __future__ import annotations

import asyncio

import pytest

from service.adapters.change_feed import (
    FeedClosed,
    PublishedChange,
    SubscriberTooSlow,
    Subscription,
)
from service.entrypoints.http.auth import token_is_valid

#: Long enough that a test never waits it out when something is ready.
PATIENT = 5.0
#: Short enough that waiting it out keeps the suite fast.
BRIEF = 0.02


def change(event_id: str, variant_id: str = "A", product_id: str = "p-A") -> PublishedChange:
    return PublishedChange(event_id, variant_id, product_id, {"variant_id": variant_id})


def subscription(
    capacity: int = 10, variant_ids: tuple[str, ...] = (), product_ids: tuple[str, ...] = ()
) -> Subscription:
    return Subscription(capacity, variant_ids, product_ids)


# ============================================================ wants (filters)


def test_a_subscription_without_filters_wants_every_change() -> None:
    sub = subscription()

    assert sub.wants(change("e1", "A", "p-A"))
    assert sub.wants(change("e2", "Z", "p-Z"))


def test_a_variant_filter_wants_only_those_variants() -> None:
    sub = subscription(variant_ids=("A", "B"))

    assert sub.wants(change("e1", "A", "p-1"))
    assert sub.wants(change("e2", "B", "p-2"))
    assert not sub.wants(change("e3", "C", "p-1"))


def test_a_product_filter_wants_every_variant_of_those_products() -> None:
    sub = subscription(product_ids=("p-shoes",))

    assert sub.wants(change("e1", "shoe-41", "p-shoes"))
    assert sub.wants(change("e2", "shoe-42", "p-shoes"))
    assert not sub.wants(change("e3", "hat-m", "p-hats"))


def test_variant_and_product_filters_together_want_a_change_matching_either() -> None:
    sub = subscription(variant_ids=("hat-m",), product_ids=("p-shoes",))

    assert sub.wants(change("e1", "hat-m", "p-hats"))
    assert sub.wants(change("e2", "shoe-41", "p-shoes"))
    assert not sub.wants(change("e3", "hat-l", "p-hats"))


def test_a_variant_filter_does_not_match_a_product_with_the_same_name() -> None:
    sub = subscription(variant_ids=("X",))

    assert not sub.wants(change("e1", "A", "X"))


# ============================================================= offer / next


async def test_next_returns_offered_changes_in_the_order_they_came() -> None:
    sub = subscription()
    first, second, third = change("e1"), change("e2", "B"), change("e3")
    for c in (first, second, third):
        sub.offer(c)

    assert await sub.next(PATIENT) is first
    assert await sub.next(PATIENT) is second
    assert await sub.next(PATIENT) is third


async def test_next_returns_none_after_waiting_with_nothing_offered() -> None:
    sub = subscription()

    assert await sub.next(BRIEF) is None


async def test_next_returns_none_once_the_buffer_is_read_empty() -> None:
    sub = subscription()
    sub.offer(change("e1"))

    assert await sub.next(PATIENT) is not None
    assert await sub.next(BRIEF) is None


async def test_a_waiting_next_wakes_up_for_a_change_offered_meanwhile() -> None:
    sub = subscription()
    waiting = asyncio.create_task(sub.next(PATIENT))
    await asyncio.sleep(0)  # let it start waiting
    offered = change("e1")

    sub.offer(offered)

    assert await asyncio.wait_for(waiting, 1.0) is offered


async def test_a_subscription_keeps_up_to_its_capacity() -> None:
    sub = subscription(capacity=3)
    offered = [change(f"e{i}") for i in range(3)]
    for c in offered:
        sub.offer(c)

    assert [await sub.next(PATIENT) for _ in offered] == offered
    assert not sub.overflowed


async def test_reading_makes_room_again() -> None:
    sub = subscription(capacity=1)
    sub.offer(change("e1"))
    await sub.next(PATIENT)

    sub.offer(change("e2"))

    assert (await sub.next(PATIENT)).event_id == "e2"
    assert not sub.overflowed


# ================================================================ overflow


async def test_one_change_past_capacity_makes_next_raise_too_slow() -> None:
    sub = subscription(capacity=2)
    for i in range(3):
        sub.offer(change(f"e{i}"))

    assert sub.overflowed
    with pytest.raises(SubscriberTooSlow):
        await sub.next(PATIENT)


async def test_an_overflow_drops_the_changes_still_buffered() -> None:
    """A cut-off client must re-read levels: it is not handed a gappy tail first."""
    sub = subscription(capacity=2)
    for i in range(3):
        sub.offer(change(f"e{i}"))

    for _ in range(3):
        with pytest.raises(SubscriberTooSlow):
            await sub.next(PATIENT)


async def test_changes_offered_after_an_overflow_are_ignored() -> None:
    sub = subscription(capacity=1)
    sub.offer(change("e1"))
    sub.offer(change("e2"))  # overflows

    sub.offer(change("e3"))

    with pytest.raises(SubscriberTooSlow):
        await sub.next(PATIENT)


# ================================================================== close


async def test_next_after_close_raises_feed_closed() -> None:
    sub = subscription()

    sub.close()

    assert sub.closed
    with pytest.raises(FeedClosed):
        await sub.next(PATIENT)


async def test_close_ends_the_stream_even_with_changes_buffered() -> None:
    sub = subscription()
    sub.offer(change("e1"))

    sub.close()

    with pytest.raises(FeedClosed):
        await sub.next(PATIENT)


async def test_close_wakes_a_waiting_next() -> None:
    sub = subscription()
    waiting = asyncio.create_task(sub.next(PATIENT))
    await asyncio.sleep(0)  # let it start waiting

    sub.close()

    with pytest.raises(FeedClosed):
        await asyncio.wait_for(waiting, 1.0)


async def test_close_wins_over_an_overflow() -> None:
    sub = subscription(capacity=0)
    sub.offer(change("e1"))  # overflows at once

    sub.close()

    with pytest.raises(FeedClosed):
        await sub.next(PATIENT)


# ==================================================== bearer token comparison


def test_the_only_accepted_token_is_valid() -> None:
    assert token_is_valid("s3cret", ["s3cret"])


@pytest.mark.parametrize("presented", ["first-token", "second-token", "third-token"])
def test_a_token_matching_any_of_several_is_valid(presented: str) -> None:
    assert token_is_valid(presented, ["first-token", "second-token", "third-token"])


def test_a_token_matching_none_is_not_valid() -> None:
    assert not token_is_valid("guess", ["first-token", "second-token"])


def test_no_token_is_valid_when_none_is_accepted() -> None:
    assert not token_is_valid("anything", [])
    assert not token_is_valid("", [])


def test_a_prefix_of_an_accepted_token_is_not_valid() -> None:
    assert not token_is_valid("s3c", ["s3cret"])


def test_an_accepted_token_with_more_appended_is_not_valid() -> None:
    assert not token_is_valid("s3cret-and-more", ["s3cret"])


def test_an_empty_token_is_not_valid() -> None:
    assert not token_is_valid("", ["s3cret"])


def test_tokens_are_compared_case_sensitively() -> None:
    assert not token_is_valid("S3CRET", ["s3cret"])


def test_a_non_ascii_token_is_compared_like_any_other() -> None:
    assert token_is_valid("clé-ünïcode", ["other", "clé-ünïcode"])
    assert not token_is_valid("cle-unicode", ["clé-ünïcode"])


async def test_a_feed_that_loses_kafka_cuts_every_subscriber_off() -> None:
    """Changes published while the feed reconnects are never streamed: each
    subscriber is told (overflow) so it reconnects and re-reads the levels."""
    import asyncio

    from service.adapters.change_feed import StockChangeFeed
    from service.settings import Settings

    feed = StockChangeFeed(Settings(retry_initial_backoff_seconds=0.01))
    subscriber = feed.subscribe()
    lost = asyncio.Event()

    async def broken_tail() -> None:
        if lost.is_set():
            await asyncio.sleep(3600)
        lost.set()
        raise ConnectionError("broker away")

    feed._tail = broken_tail  # type: ignore[method-assign]
    await feed.start()
    try:
        await asyncio.wait_for(lost.wait(), 5)
        with pytest.raises(SubscriberTooSlow):
            await subscriber.next(1)
    finally:
        await feed.stop()
