"""Load shedding and rate limits, per server process (one asyncio event loop).

* :class:`Admission`: one endpoint's bounded concurrency and bounded queue, with a deadline. A request
  that would wait longer than it can afford (the deadline less the endpoint's recent service time),
  or that finds the queue full, is refused at once (the app answers 503 with ``Retry-After``); one
  that waited in the queue past its start-by time is refused then. So the requests the server
  accepts finish near or under the deadline, and a surge costs a few refusals, not everyone's latency.
* :class:`TokenBuckets`: a token bucket per client key (``rate`` tokens/s, ``burst`` at most); a
  request without a token gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque


class Refused(Exception):
    """A request refused before it started: ``retry_after`` seconds is when to try again."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = max(1, math.ceil(retry_after))


class Admission:
    """``concurrency`` requests run at once; up to ``queue`` more wait, first come first served.

    ``service`` is an exponentially weighted mean of how long an admitted request runs (seconds);
    a newcomer behind ``n`` waiting requests expects to start after about
    ``(n + 1) / concurrency * service`` (0 when a slot is free).
    """

    def __init__(self, concurrency: int, queue: int, deadline: float, alpha: float = 0.1) -> None:
        self.concurrency, self.max_queue, self.deadline, self.alpha = concurrency, queue, deadline, alpha
        self.running = 0
        self.service = 0.0
        self._waiting: deque[asyncio.Future] = deque()

    def expected_wait(self) -> float:
        if self.running < self.concurrency and not self._waiting:
            return 0.0
        return (len(self._waiting) + 1) / self.concurrency * self.service

    async def acquire(self, arrived: float, lag: float = 0.0) -> None:
        """Take a slot, or raise :class:`Refused`. ``arrived``: ``time.perf_counter()`` at arrival;
        ``lag``: how late the event loop runs (:class:`LoopLag`), time a request spends before the app
        sees it, so it is taken off the budget."""
        budget = self.deadline - self.service - lag  # the latest start that can still finish in time
        if budget <= 0:
            raise Refused("overloaded", lag + self.service)
        if self.running < self.concurrency and not self._waiting:
            self.running += 1
            return
        if len(self._waiting) >= self.max_queue:
            raise Refused("queue full", self.expected_wait())
        if self.expected_wait() > budget:
            raise Refused("deadline", self.expected_wait())
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, budget - (time.perf_counter() - arrived)))
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():  # the slot came at the last moment: give it on
                self._release_slot()
            else:
                fut.cancel()
                try:
                    self._waiting.remove(fut)
                except ValueError:
                    pass
            raise Refused("deadline", self.expected_wait()) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release_slot()
            else:
                fut.cancel()
            raise

    def release(self, seconds: float) -> None:
        """A request that held a slot for ``seconds`` is done."""
        self.service = seconds if self.service == 0.0 else (1 - self.alpha) * self.service + self.alpha * seconds
        self._release_slot()

    def _release_slot(self) -> None:
        while self._waiting:  # hand the slot to the oldest live waiter
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1


class LoopLag:
    """How late the event loop wakes a sleeper (seconds, decaying maximum): when the loop itself is
    saturated, requests wait before the app sees them, and that wait counts against their deadline."""

    def __init__(self, interval: float = 0.02, decay: float = 0.8) -> None:
        self.interval, self.decay = interval, decay
        self.seconds = 0.0

    async def watch(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval)
            late = max(0.0, time.perf_counter() - t - self.interval)
            self.seconds = max(late, self.seconds * self.decay)


class TokenBuckets:
    """A token bucket per key: ``rate`` tokens a second up to ``burst``; the least recently seen keys
    are forgotten beyond ``max_keys`` (a forgotten key starts again with a full bucket)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> None:
        """Take one token for ``key`` or raise :class:`Refused`."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise Refused("rate", (1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
