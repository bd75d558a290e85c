"""Request batching: concurrent /v1/rank requests coalesced into one forward, with a bounded wait.

Handlers put their parsed query on an asyncio queue and await a future. One collector task takes the
first query, then every query already queued, up to ``max_rows`` candidate rows; it waits for more
only while other requests are still being read and parsed (``inflight`` minus those queued or
collected), and never longer than ``max_wait``
after the first. Batches are built and scored on ``workers`` forward threads (default one per core),
each with its own copy of the model (``run_batch`` gets the thread's index), so the event loop keeps
accepting requests, which pile up for the next batch, and one model object sees one forward at a
time. The collector forms a batch only when a forward thread is free. At concurrency 1 nothing
waits: a lone request is scored at once.

All queries of a batch are scored with the same bundle, read when the batch is formed: a bundle
swapped in meanwhile serves the next batch (the swap never splits a batch).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mmrank.serve.builder import RankQuery


@dataclass
class _Job:
    query: RankQuery
    explain: bool
    future: asyncio.Future
    enqueued: float


class RankBatcher:
    """Coalesce rank queries; ``run_batch(bundle, queries, explain_flags) -> list[result]`` does the work.

    Args:
        get_bundle: returns the current bundle (read once per batch).
        run_batch: builds and scores a batch (called on the worker thread).
        max_rows: at most this many candidate rows per forward (a single larger request runs alone).
        max_wait: seconds a batch may wait for requests still arriving, after its first.
        on_batch: called with ``(n_requests, n_rows, seconds)`` after each forward (metrics).
        workers: forward threads; ``run_batch(bundle, queries, explain, worker=i)`` is called with
            the thread's index ``0 <= i < workers`` when ``workers > 1``.
    """

    def __init__(self, get_bundle: Callable[[], Any], run_batch: Callable[..., list],
                 max_rows: int = 8192, max_wait: float = 0.002,
                 on_batch: Callable[[int, int, float], None] | None = None, workers: int = 1) -> None:
        self.get_bundle, self.run_batch = get_bundle, run_batch
        self.max_rows, self.max_wait, self.on_batch = max_rows, max_wait, on_batch
        self.workers = max(1, int(workers))
        self.inflight = 0  # /v1/rank requests received and not yet answered (kept by the app)
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._free: asyncio.LifoQueue[int] | None = None  # indices of idle forward threads
        self._running: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mmrank-forward")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._free = asyncio.LifoQueue()
        for i in reversed(range(self.workers)):
            self._free.put_nowait(i)
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def submit(self, query: RankQuery, explain: bool = False) -> Any:
        """Queue ``query``; returns its result (or raises what scoring raised for it)."""
        if self._queue is None:
            raise RuntimeError("RankBatcher.start() was not called")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(query, explain, fut, time.perf_counter()))
        return await fut

    async def _collect(self) -> None:
        q = self._queue
        loop = asyncio.get_running_loop()
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                first = await q.get()
            # the batch is formed once a forward thread is free (requests queue up meanwhile); the
            # thread freed last is taken first (LIFO: its model and buffers are warm in the cache)
            worker = await self._free.get()
            jobs, rows = [first], len(first.query.candidates)
            deadline = time.perf_counter() + self.max_wait
            while rows < self.max_rows:
                try:
                    job = q.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.perf_counter()
                    arriving = self.inflight - len(jobs) - q.qsize() - self._busy_jobs
                    if arriving <= 0 or left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(q.get(), timeout=left)
                    except asyncio.TimeoutError:
                        break
                if rows + len(job.query.candidates) > self.max_rows:
                    self._carry = job  # keep the batch bounded; this job starts the next one
                    break
                jobs.append(job)
                rows += len(job.query.candidates)
            self._launch(loop, worker, jobs, rows)

    _busy_jobs = 0  # requests inside running forwards (not "arriving")
    _carry: _Job | None = None  # the job that did not fit the last batch: first of the next

    def _launch(self, loop: asyncio.AbstractEventLoop, worker: int, jobs: list[_Job], rows: int) -> None:
        self._busy_jobs += len(jobs)  # now, not when the task starts: they are not "arriving"
        task = loop.create_task(self._run(loop, worker, jobs, rows))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, loop: asyncio.AbstractEventLoop, worker: int, jobs: list[_Job], rows: int) -> None:
        live = [j for j in jobs if not j.future.cancelled()]
        try:
            if not live:
                return
            bundle = self.get_bundle()
            t0 = time.perf_counter()
            args = (bundle, [j.query for j in live], [j.explain for j in live])
            fn = self.run_batch if self.workers == 1 else functools.partial(self.run_batch, worker=worker)
            try:
                results = await loop.run_in_executor(self._pool, fn, *args)
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(err)
                return
            if self.on_batch is not None:
                self.on_batch(len(live), rows, time.perf_counter() - t0)
            for j, r in zip(live, results):
                if not j.future.done():
                    j.future.set_result(r)
        finally:
            self._busy_jobs -= len(jobs)
            self._free.put_nowait(worker)
