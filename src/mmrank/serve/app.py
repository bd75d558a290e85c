"""The ranking service (Figure 4 of the CIKM'24 paper: the online server reads the real-time embedding
table): rank, ingest and search over HTTP, with request batching, bundle hot swap and a page at ``/``.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/rank``: a user (logged id and/or recent behaviour), a context (query, region) and up to
  1,000 candidates -> scores and an order. Candidates the ID model does not know are scored from their
  content (their vectors); candidates the embedding table does not know are listed in ``unknown``.
* ``POST /v1/items`` (API key): a new item is encoded, written durably and indexed; the next
  /v1/rank and /v1/search see it (on every process sharing the table).
* ``POST /v1/search``: text or a photo -> top-k items. ``GET /v1/items/{id}`` and ``.../image``.
* ``GET /v1/users``: some logged users (the page's picker). ``GET /v1/bundle``: what is loaded.
* ``POST /v1/admin/reload`` (API key): load the run's bundle again in the background, swap atomically.
* ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /`` (the page).

Errors: 422 names the field at fault (``{"error", "field", "detail"}``), 401 a write without a valid
key, 409 an item id posted twice or a bundle that fails its checks, 413 a body over the limit.

Example::

    >>> app = create_app(Settings(run=Path("runs/demo"), api_key="secret"))   # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader

from mmrank.errors import DataError, MMRankError
from mmrank.serve import schemas as S
from mmrank.serve.batching import RankBatcher
from mmrank.serve.builder import RankQuery, build, simtier_histograms
from mmrank.serve.bundle import Bundle, RerankInput, load_bundle
from mmrank.serve.metrics import Metrics

PAGE = Path(__file__).with_name("page.html")
SWAP_GRACE_SECONDS = 30.0  # an old bundle is closed this long after a swap (in-flight work ends)


@dataclass
class Settings:
    """How one server process runs (the CLI fills it from flags and environment)."""

    run: Path
    strategy: str | None = None
    api_key: str | None = None
    max_body_bytes: int = 16 << 20
    max_wait_ms: float = 2.0
    # Measured (benchmarks/serve_latency.py, 200 candidates x 50 behaviour items per request, simtier,
    # 1 thread, 2-core machine at load ~7): one forward over k such requests costs 8.6, 10.3, 19.9,
    # 20.3, 26.4 ms per request for k = 1, 2, 4, 8, 16 -- the per-pair attention tensors
    # ((rows x 50) x 80 floats) are memory-bound and outgrow the cache. So a batch stops near 512
    # rows: large requests run one or two per forward, small ones still coalesce.
    max_batch_rows: int = 512
    threads: int | None = None          # torch threads (default: unchanged)
    forward_workers: int = 1            # forward threads, each with its own model copy
    batching: bool = True

    @classmethod
    def from_env(cls) -> "Settings":
        """``MMRANK_SERVE_*`` variables (set by ``mmrank serve`` for its uvicorn workers) and the
        key from ``--api-key-file`` (``MMRANK_SERVE_API_KEY_FILE``) or ``MMRANK_API_KEY``."""
        env = os.environ
        if "MMRANK_SERVE_RUN" not in env:
            raise MMRankError("MMRANK_SERVE_RUN is not set (start the server with `mmrank serve --run R`)")
        return cls(run=Path(env["MMRANK_SERVE_RUN"]), strategy=env.get("MMRANK_SERVE_STRATEGY") or None,
                   api_key=read_api_key(env.get("MMRANK_SERVE_API_KEY_FILE")),
                   max_body_bytes=int(env.get("MMRANK_SERVE_MAX_BODY", 16 << 20)),
                   max_wait_ms=float(env.get("MMRANK_SERVE_MAX_WAIT_MS", 2.0)),
                   max_batch_rows=int(env.get("MMRANK_SERVE_MAX_BATCH_ROWS", 512)),
                   threads=int(env["MMRANK_SERVE_THREADS"]) if env.get("MMRANK_SERVE_THREADS") else None,
                   forward_workers=int(env.get("MMRANK_SERVE_FORWARD_WORKERS", 1)),
                   batching=env.get("MMRANK_SERVE_BATCHING", "1") != "0")


def read_api_key(path: str | Path | None) -> str | None:
    """The API key from a file (first line, stripped) if given, else ``MMRANK_API_KEY``."""
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as err:
            raise MMRankError(f"{path}: cannot read the API key file ({err.strerror})") from None
        if not key:
            raise MMRankError(f"{path}: the API key file is empty")
        return key
    return os.environ.get("MMRANK_API_KEY") or None


# ---- scoring one batch (on the forward thread) ---------------------------------------------------------
def run_batch(bundle: Bundle, queries: list[RankQuery], explain: list[bool], worker: int = 0) -> list[dict]:
    """Build one batch from every query, run one forward (with forward thread ``worker``'s model),
    split the results per query."""
    from mmrank.ctr.scoring import score

    built = build(queries, bundle)
    n_rows = sum(len(q.scored) for q in built.queries)
    logits = (score(bundle.model_for(worker), built.batch, built.vectors).numpy() if n_rows
              else np.zeros(0, np.float32))
    out = []
    for q, rows, ex in zip(queries, built.queries, explain):
        lg = logits[rows.start:rows.stop].astype(np.float64)
        prob = 1.0 / (1.0 + np.exp(-lg))
        order = np.argsort(-lg, kind="stable")
        titles = bundle.store.meta(rows.scored)[1] if ex else None
        hist = simtier_histograms(built, rows, bundle.n_tiers) if ex else None
        items = [{"item_id": int(rows.scored[i]), "rank": r, "score": float(prob[i]), "logit": float(lg[i]),
                  "id_known": bool(rows.id_known[i]),
                  "title": titles[i] if titles is not None else None,
                  "simtier": hist[i].tolist() if hist is not None else None}
                 for r, i in enumerate(order)]
        res = {"bundle": bundle.id, "strategy": bundle.strategy, "encoder_version": bundle.encoder_version,
               "user_known": rows.user_known, "history_length": int(len(rows.history)),
               "region": rows.region, "items": items,
               "unknown": [{"item_id": int(i), "reason": "not in the embedding table "
                            f"(encoder version {bundle.encoder_version})"} for i in rows.unknown],
               "reranked": None, "rerank_status": bundle.rerank_status}
        if bundle.reranker is not None and len(order):
            res["reranked"] = _rerank(bundle, built, q, rows, order, prob)
        out.append(res)
    return out


def _rerank(bundle: Bundle, built, q: RankQuery, rows, order: np.ndarray, prob: np.ndarray) -> list[dict]:
    def vec(ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(built.vec_ids, ids)
        ok = (pos < len(built.vec_ids)) & (built.vec_ids[np.minimum(pos, len(built.vec_ids) - 1)] == ids)
        return built.vec_rows[pos[ok]]

    ids = rows.scored[order]
    cats, _ = bundle.store.meta(ids)
    inp = RerankInput(item_ids=ids, ctr_scores=prob[order].astype(np.float32), item_vectors=vec(ids),
                      category_ids=cats, hist_item_ids=rows.history, hist_vectors=vec(rows.history),
                      user_id=q.user_id, region=rows.region, query=q.query)
    r = bundle.reranker.rerank(inp)
    w = r.modality_weights
    return [{"item_id": int(ids[i]), "rank": k, "score": float(r.scores[i]),
             "modality_weights": w[i] if w is not None else None} for k, i in enumerate(r.order)]


# ---- middleware ------------------------------------------------------------------------------------------
class _Guard:
    """Pure ASGI: 413 for a body over the limit (by Content-Length, or while reading a chunked one),
    in-flight count of /v1/rank (for the batcher), request metrics by route template."""

    def __init__(self, app, state: "_State") -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.state.settings.max_body_bytes
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
        if length is not None and length > limit:
            body = json.dumps({"error": f"request body of {length} bytes is over the limit of {limit} bytes",
                               "field": None}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            self.state.metrics.request(scope, "POST", 413, 0.0)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return msg

        status = 500
        t0 = time.perf_counter()

        async def send_status(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        is_rank = scope.get("path") == "/v1/rank"
        batcher = self.state.batcher
        if is_rank and batcher is not None:
            batcher.inflight += 1
        try:
            await self.app(scope, limited_receive, send_status)
        finally:
            if is_rank and batcher is not None:
                batcher.inflight -= 1
            self.state.metrics.request(scope, scope.get("method", ""), status, time.perf_counter() - t0)


class _State:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bundle: Bundle | None = None
        self.batcher: RankBatcher | None = None
        self.metrics = Metrics()
        self.swap_lock = asyncio.Lock()
        self.swaps = 0

    def current(self) -> Bundle:
        b = self.bundle
        if b is None:
            raise HTTPException(503, "the bundle is still loading")
        return b


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def create_app(settings: Settings, bundle: Bundle | None = None) -> FastAPI:
    """The FastAPI app. ``bundle`` (optional) is used instead of loading ``settings.run`` at start-up."""
    from mmrank import threads

    state = _State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threads.configure(settings.threads)
        threads.serving_switch_interval()
        threads.reuse_freed_memory()
        loop = asyncio.get_running_loop()
        state.bundle = bundle or await loop.run_in_executor(None, load_bundle, settings.run, settings.strategy)
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
        yield
        if state.batcher is not None:
            await state.batcher.stop()
        if state.bundle is not None:
            state.bundle.close()

    app = FastAPI(title="mmrank", version="0.1.0", lifespan=lifespan,
                  description="Multimodal ranking: rank, ingest and search (see mmrank.serve.app).")
    app.state.mmrank = state
    app.add_middleware(_Guard, state=state)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="the server's key (MMRANK_API_KEY or --api-key-file)")

    def require_key(key: str | None = Depends(key_header)) -> None:
        expected = settings.api_key
        if expected is None:
            raise HTTPException(401, "writes are disabled: this server has no API key "
                                     "(set MMRANK_API_KEY or --api-key-file)",
                                headers={"WWW-Authenticate": "ApiKey"})
        # constant time in the key's content (hmac.compare_digest on bytes)
        if key is None or not hmac.compare_digest(key.encode("utf-8", "surrogateescape"),
                                                  expected.encode("utf-8")):
            raise HTTPException(401, "missing or invalid API key (header X-API-Key)",
                                headers={"WWW-Authenticate": "ApiKey"})

    errors = {401: {"model": S.ErrorOut}, 409: {"model": S.ErrorOut}, 413: {"model": S.ErrorOut},
              422: {"model": S.ErrorOut}}

    # ---- errors -----------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        detail = [{"field": _field(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in errs[:20]]
        return JSONResponse({"error": f"field '{field}': {first.get('msg', '')}", "field": field,
                             "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    def _data_error(err: DataError, status: int = 422) -> JSONResponse:
        return JSONResponse({"error": err.detail, "field": err.column}, status_code=status)

    # ---- pages and health -------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/healthz")
    async def healthz() -> dict:
        b = state.bundle
        return {"status": "ok" if b is not None else "loading", "bundle": b.id if b else None,
                "swaps": state.swaps}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        b = state.bundle
        if b is not None:
            state.metrics.table_items.set(len(b.store))
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/bundle")
    async def bundle_info() -> dict:
        return state.current().describe()

    @app.get("/v1/users", response_model=list[S.UserInfo])
    async def users(limit: int = Query(20, ge=1, le=200)) -> list[dict]:
        return state.current().users.sample(limit)

    # ---- rank ---------------------------------------------------------------------------------------
    @app.post("/v1/rank", response_model=S.RankOut, responses=errors)
    async def rank(body: S.RankIn) -> Any:
        q = RankQuery(user_id=body.user.user_id,
                      history=None if body.user.history is None else np.asarray(body.user.history, np.int64),
                      region=body.context.region, query=body.context.query,
                      candidates=np.asarray(body.candidates, np.int64))
        try:
            if state.batcher is not None:
                res = await state.batcher.submit(q, body.explain)
            else:
                b = state.current()
                res = (await asyncio.get_running_loop().run_in_executor(None, run_batch, b, [q],
                                                                        [body.explain]))[0]
        except DataError as err:
            return _data_error(err)
        # run_batch builds plain JSON types in the documented shape (RankOut, checked by the tests):
        # returning it as a response skips a second validation of up to 1,000 items per request
        return JSONResponse(res)

    # ---- items --------------------------------------------------------------------------------------
    @app.post("/v1/items", response_model=S.ItemOut, status_code=201, responses=errors,
              dependencies=[Depends(require_key)])
    async def add_item(body: S.ItemIn) -> Any:
        from mmrank.store.items import ItemExists, decode_b64_image

        b = state.current()
        try:
            image = decode_b64_image(body.image_b64, "image_b64")
            item = {"item_id": body.item_id, "title": body.title, "image": image, "category": body.category,
                    "created_at": body.created_at if body.created_at is not None else int(time.time()),
                    "attributes": body.attributes}
            t = await asyncio.get_running_loop().run_in_executor(None, b.store.ingest, item)
        except ItemExists as err:
            return _data_error(err, 409)
        except DataError as err:
            if err.column == "image":
                err.column = "image_b64"
            return _data_error(err)
        state.metrics.ingested.inc()
        return {"item_id": body.item_id, "encoder_version": b.encoder_version,
                "timings_ms": {k: v for k, v in t.items() if k.endswith("_ms")}}

    @app.get("/v1/items/{item_id}", response_model=S.ItemInfo, responses={404: {"model": S.ErrorOut}})
    async def item_info(item_id: int) -> Any:
        b = state.current()
        if not 0 <= item_id <= S.INT64_MAX:
            raise HTTPException(404, f"no item {item_id}")
        ids = np.array([item_id], np.int64)
        in_table = bool(b.store.vectors(ids)[1][0])
        cats, titles = b.store.meta(ids)
        if not in_table and not titles[0]:
            raise HTTPException(404, f"no item {item_id}")
        return {"item_id": item_id, "in_table": in_table, "title": titles[0], "category_id": int(cats[0])}

    @app.get("/v1/items/{item_id}/image", responses={404: {"model": S.ErrorOut}},
             response_class=Response)
    async def item_image(item_id: int) -> Response:
        b = state.current()
        img = b.store.image(item_id) if 0 <= item_id <= S.INT64_MAX else None
        if not img:
            raise HTTPException(404, f"no photo of item {item_id}")
        ctype = "image/png" if img[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return Response(img, media_type=ctype, headers={"Cache-Control": "max-age=3600"})

    # ---- search -------------------------------------------------------------------------------------
    @app.post("/v1/search", response_model=S.SearchOut, responses=errors)
    async def search(body: S.SearchIn) -> Any:
        from mmrank.store.items import decode_b64_image

        b = state.current()
        loop = asyncio.get_running_loop()
        try:
            if body.text is not None:
                hits = await loop.run_in_executor(None, b.store.search_text, body.text, body.k)
            else:
                image = decode_b64_image(body.image_b64, "image_b64")
                hits = await loop.run_in_executor(None, b.store.search_image, image, body.k)
        except DataError as err:
            if err.column in ("image", None) and body.image_b64 is not None:
                err.column = "image_b64"
            elif err.column in ("title", "text", None):
                err.column = "text"
            return _data_error(err)
        return {"encoder_version": b.encoder_version, "results": hits}

    # ---- hot swap -----------------------------------------------------------------------------------
    @app.post("/v1/admin/reload", responses=errors, dependencies=[Depends(require_key)])
    async def reload(body: S.ReloadIn | None = None) -> Any:
        strategy = (body.strategy if body is not None else None) or settings.strategy
        loop = asyncio.get_running_loop()
        async with state.swap_lock:
            old = state.bundle
            try:
                new = await loop.run_in_executor(None, load_bundle, settings.run, strategy)
            except MMRankError as err:
                return JSONResponse({"error": f"the new bundle was not loaded, still serving "
                                              f"{old.id if old else None}: {' '.join(str(err).split())}",
                                     "field": "strategy" if body and body.strategy else None},
                                    status_code=409)
            state.bundle = new  # one reference assignment: the next batch or request sees it
            state.swaps += 1
            state.metrics.set_bundle(new)
            if old is not None and old.encoder_version != new.encoder_version:
                # items posted to the old bundle while the new one loaded: encode them for the new one
                await loop.run_in_executor(None, new.store.catch_up)
        if old is not None:
            loop.call_later(SWAP_GRACE_SECONDS, old.close)
        return {"previous": old.id if old else None, **new.describe()}

    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory ``mmrank serve`` starts (one per worker): settings from the environment."""
    return create_app(Settings.from_env())
