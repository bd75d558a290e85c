"""Operations: ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /v1/bundle`` (what is loaded)
and ``POST /v1/admin/reload`` (write key: load the run's bundle again, swap it in atomically)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from mmrank.errors import MMRankError
from mmrank.serve import schemas as S
from mmrank.serve.bundle import load_bundle
from mmrank.serve.state import ERRORS, ServerState, get_state, read_access, require_write_key

SWAP_GRACE_SECONDS = 30.0  # an old bundle is closed this long after a swap (in-flight work ends)

router = APIRouter()


@router.get("/healthz")
async def healthz(state: ServerState = Depends(get_state)) -> dict:
    b = state.bundle
    return {"status": "ok" if b is not None else "loading", "bundle": b.id if b else None,
            "swaps": state.swaps, "device": b.device_name if b else None}


@router.get("/metrics", include_in_schema=False)
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    b = state.bundle
    if b is not None:
        state.metrics.table_items.set(len(b.store))
    body, ctype = state.metrics.render()
    return Response(body, media_type=ctype)


@router.get("/v1/bundle", dependencies=[Depends(read_access)])
async def bundle_info(state: ServerState = Depends(get_state)) -> dict:
    return state.current().describe()


@router.post("/v1/admin/reload", responses=ERRORS, dependencies=[Depends(require_write_key)])
async def reload(body: S.ReloadIn | None = None, state: ServerState = Depends(get_state)) -> Any:
    settings = state.settings
    strategy = (body.strategy if body is not None else None) or settings.strategy
    loop = asyncio.get_running_loop()
    async with state.swap_lock:
        old = state.bundle
        try:
            new = await loop.run_in_executor(None, functools.partial(load_bundle, settings.run, strategy,
                                                                     rerank_model=settings.rerank_model,
                                                                     hardware=settings.hardware))
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
