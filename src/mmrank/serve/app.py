"""The ranking service (Figure 4 of the CIKM'24 paper: the online server reads the real-time embedding
table): rank, ingest and search over HTTP, with request batching, bundle hot swap and a page at ``/``.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/rank``: a user (logged id and/or recent behaviour), a context (query, region) and up to
  1,000 candidates -> scores and an order. Candidates the ID model does not know are scored from their
  content (their vectors); candidates the embedding table does not know are listed in ``unknown``.
* ``POST /v1/rerank``: one candidate list (:class:`mmrank.rerank.serving.CandidateList`) -> the
  trained re-ranker's order and scores (``--rerank-model``; 409 when the run has none), batched like
  /v1/rank with its own queue.
* ``POST /v1/creative``: an item, a region and the user's recent creative clicks (or a logged
  ``user_id``) -> the creative selector's choice and its reason (:mod:`mmrank.serve.routes.creative`;
  409 without a selector). ``GET /v1/creatives`` (whether the run has creatives),
  ``GET /v1/items/{id}/creatives`` and ``GET /v1/creatives/{id}/image``: what the page shows.
* ``POST /v1/items`` (API key): a new item is encoded, written durably and indexed; the next
  /v1/rank and /v1/search see it (on every process sharing the table).
* ``POST /v1/search``: text or a photo -> top-k items. ``GET /v1/items/{id}`` and ``.../image``.
* ``GET /v1/users``: some logged users (the page's picker). ``GET /v1/bundle``: what is loaded.
* ``POST /v1/admin/reload`` (API key): load the run's bundle again in the background, swap atomically.
* ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /`` (the page).

Errors: 422 names the field at fault (``{"error", "field", "detail"}``), 401 a write without a valid
key, 409 an item id posted twice or a bundle that fails its checks, 413 a body or an image over the
limit, 429 a client over its read rate, 503 (with ``Retry-After``) a request the server cannot start
within its deadline. The limits and their defaults: :mod:`mmrank.serve.config`.

The routes, one router per concern, are in :mod:`mmrank.serve.routes`; this module assembles them.

Example::

    >>> app = create_app(Settings(run=Path("runs/demo"), api_key="secret"))   # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
import warnings
from contextlib import asynccontextmanager

from fastapi import FastAPI
from PIL import Image

from mmrank.serve import errors
from mmrank.serve.batching import RankBatcher
from mmrank.serve.bundle import Bundle, load_bundle
from mmrank.serve.config import Settings
from mmrank.serve.middleware import Guard
from mmrank.serve.routes import creative, health, items, page, rank, rerank, search
from mmrank.serve.scoring import run_batch, run_rerank_batch
from mmrank.serve.state import ServerState


async def _first_bundle(settings: Settings, loop: asyncio.AbstractEventLoop) -> Bundle:
    """The run's bundle; while the shared item store (Redis) does not answer, tried again every second
    for up to ``settings.store_wait_s`` (a worker restarted during a Redis restart waits for it)."""
    give_up = time.monotonic() + settings.store_wait_s
    while True:
        try:
            return await loop.run_in_executor(None, functools.partial(load_bundle, settings.run, settings.strategy,
                                                                      rerank_model=settings.rerank_model,
                                                                      hardware=settings.hardware))
        except Exception as err:  # noqa: BLE001 - only the store being down is waited out
            if not errors.store_unavailable(err) or time.monotonic() > give_up:
                raise
        await asyncio.sleep(1.0)


def _lifespan(state: ServerState, bundle: Bundle | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from mmrank import threads

        settings = state.settings
        # images are checked against the server's own, lower pixel cap before they are decoded
        # (mmrank.serve.images): the imaging library's warning for large ones is noise here
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        threads.configure(settings.threads)
        threads.serving_switch_interval()
        threads.reuse_freed_memory()
        loop = asyncio.get_running_loop()
        state.bundle = bundle or await _first_bundle(settings, loop)
        # The first bundle's objects (histories, titles, vocabularies) and the libraries' live as long
        # as the server: keep the cyclic garbage collector from walking them again on every full
        # collection (a tail-latency pause that grows with the catalog). Not after a swap: a frozen
        # old bundle caught in a reference cycle would never be freed.
        gc.freeze()
        state.metrics.set_bundle(state.bundle)
        if settings.batching:
            state.batcher = RankBatcher(state.current, run_batch, max_rows=settings.max_batch_rows,
                                        max_wait=settings.max_wait_ms / 1e3, on_batch=state.metrics.batch,
                                        workers=settings.forward_workers)
            state.batcher.start()
            state.rerank_batcher = RankBatcher(state.current, run_rerank_batch, max_rows=settings.max_batch_rows,
                                               max_wait=settings.max_wait_ms / 1e3,
                                               on_batch=state.metrics.rerank_batch)
            state.rerank_batcher.start()
        watcher = asyncio.create_task(state.loop_lag.watch())
        yield
        watcher.cancel()
        for b in (state.batcher, state.rerank_batcher):
            if b is not None:
                await b.stop()
        if state.bundle is not None:
            state.bundle.close()

    return lifespan


def create_app(settings: Settings, bundle: Bundle | None = None) -> FastAPI:
    """The FastAPI app. ``bundle`` (optional) is used instead of loading ``settings.run`` at start-up."""
    state = ServerState(settings)
    app = FastAPI(title="mmrank", version="0.1.0", lifespan=_lifespan(state, bundle),
                  description="Multimodal ranking: rank, ingest and search. Every endpoint, its body and "
                              "its errors are listed below.")
    app.state.mmrank = state
    app.add_middleware(Guard, state=state)
    errors.install(app)
    for module in (page, health, rank, rerank, items, search, creative):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory ``mmrank serve`` starts (one per worker): settings from the environment."""
    return create_app(Settings.from_env())
