"""The server's limits alone: the admission queue (bounded, with a deadline), the token buckets, the
image header check, and how a store outage is recognised."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from mmrank.errors import DataError, MMRankError
from mmrank.serve.limits import Admission, Refused, TokenBuckets


def test_admission_runs_up_to_its_concurrency_queues_up_to_its_bound_and_refuses_the_rest() -> None:
    async def go() -> list[str]:
        a = Admission(concurrency=2, queue=1, deadline=10.0)
        now = time.perf_counter()
        await a.acquire(now)
        await a.acquire(now)  # two run
        waiter = asyncio.ensure_future(a.acquire(now))  # the third waits
        await asyncio.sleep(0)
        with pytest.raises(Refused) as full:
            await a.acquire(now)  # the queue (1) is full: refused at once
        assert full.value.reason == "queue full" and full.value.retry_after >= 1
        assert not waiter.done()
        a.release(0.01)  # a slot frees: the waiter gets it
        await asyncio.wait_for(waiter, 1.0)
        assert a.running == 2
        a.release(0.01), a.release(0.01)
        return [str(a.running)]

    assert asyncio.run(go()) == ["0"]


def test_admission_refuses_at_once_what_cannot_start_in_time_and_times_out_a_stuck_waiter() -> None:
    async def go() -> None:
        a = Admission(concurrency=1, queue=10, deadline=0.2)
        now = time.perf_counter()
        await a.acquire(now)
        a.release(0.15)  # requests take 150 ms: a newcomer behind a running one would start too late
        await a.acquire(time.perf_counter())
        t0 = time.perf_counter()
        with pytest.raises(Refused) as late:
            await a.acquire(t0)
        assert late.value.reason == "deadline" and time.perf_counter() - t0 < 0.01  # at once, no wait
        b = Admission(concurrency=1, queue=10, deadline=0.1)
        await b.acquire(time.perf_counter())  # held and never released; service time unknown (0)
        t0 = time.perf_counter()
        with pytest.raises(Refused):
            await b.acquire(t0)  # it waits, then gives up at its start-by time
        assert 0.09 < time.perf_counter() - t0 < 0.5 and len(b._waiting) == 0  # noqa: SLF001

    asyncio.run(go())


def test_admission_takes_the_event_loops_lag_off_the_budget() -> None:
    async def go() -> None:
        a = Admission(concurrency=4, queue=4, deadline=0.2)
        await a.acquire(time.perf_counter(), lag=0.05)  # a free slot and time left: admitted
        with pytest.raises(Refused) as r:
            await a.acquire(time.perf_counter(), lag=0.25)  # the loop alone is later than the deadline
        assert r.value.reason == "overloaded" and a.running == 1

    asyncio.run(go())


def test_token_buckets_refill_at_their_rate_per_key() -> None:
    tb = TokenBuckets(rate=2.0, burst=3)
    for _ in range(3):
        tb.take("a", now=100.0)
    with pytest.raises(Refused) as r:
        tb.take("a", now=100.0)
    assert r.value.retry_after == 1  # half a second to the next token, rounded up
    tb.take("b", now=100.0)  # another key has its own bucket
    tb.take("a", now=100.5)  # one token back after 0.5 s at 2/s
    with pytest.raises(Refused):
        tb.take("a", now=100.5)


def test_image_check_reads_the_header_only() -> None:
    from PIL import Image

    from mmrank.testing.serving import bomb_png
    from mmrank.serve.images import TooLarge, check_image

    buf = io.BytesIO()
    Image.new("RGB", (60, 80), (200, 10, 10)).save(buf, format="PNG")
    photo = buf.getvalue()
    assert check_image(photo, "f", max_bytes=1 << 20, max_pixels=60 * 80) == photo
    with pytest.raises(TooLarge, match="60 x 80 pixels"):
        check_image(photo, "f", max_bytes=1 << 20, max_pixels=60 * 80 - 1)
    with pytest.raises(TooLarge, match="bytes"):
        check_image(photo, "f", max_bytes=len(photo) - 1, max_pixels=10**9)
    with pytest.raises(DataError) as bad:
        check_image(b"GIF8 nonsense", "f", max_bytes=1 << 20, max_pixels=10**9)
    assert not isinstance(bad.value, TooLarge) and bad.value.column == "f"
    bomb = bomb_png(13_000, 13_000)
    t0 = time.perf_counter()
    with pytest.raises(TooLarge, match="13000 x 13000"):
        check_image(bomb, "f", max_bytes=1 << 20, max_pixels=25_000_000)
    assert time.perf_counter() - t0 < 0.05


def test_a_store_outage_is_recognised_through_the_errors_it_caused() -> None:
    redis = pytest.importorskip("redis")
    from mmrank.serve.errors import store_unavailable

    def wrapped() -> None:
        try:
            raise redis.exceptions.ConnectionError("Connection refused")
        except redis.exceptions.ConnectionError:
            raise MMRankError("cannot reach the Redis server") from None

    with pytest.raises(MMRankError) as err:
        wrapped()
    assert store_unavailable(err.value) and store_unavailable(redis.exceptions.TimeoutError())
    assert not store_unavailable(MMRankError("no trained CTR model")) and not store_unavailable(ValueError())
