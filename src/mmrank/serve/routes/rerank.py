"""``POST /v1/rerank``: one candidate list -> the trained re-ranker's order (batched forwards, its own
queue; the re-ranker is the bundle's, :func:`mmrank.serve.bundle.load_reranker`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from mmrank.errors import DataError
from mmrank.rerank.serving import CandidateList
from mmrank.serve import schemas as S
from mmrank.serve.errors import data_error
from mmrank.serve.scoring import NoReranker, run_rerank_batch
from mmrank.serve.state import ERRORS, ServerState, get_state, read_access

router = APIRouter(dependencies=[Depends(read_access)])


def _no_reranker(status: str) -> JSONResponse:
    return JSONResponse({"error": f"this server has no trained re-ranker to serve ({status})", "field": None},
                        status_code=409)


@router.post("/v1/rerank", response_model=S.RerankOut, responses=ERRORS)
async def rerank(body: CandidateList, state: ServerState = Depends(get_state)) -> Any:
    b = state.current()
    if b.reranker is None:
        return _no_reranker(b.rerank_status)
    try:
        prepared = b.reranker.prepare(body)
    except DataError as err:
        return data_error(err)
    try:
        if state.rerank_batcher is not None:
            res = await state.rerank_batcher.submit(prepared)
        else:
            res = (await asyncio.get_running_loop().run_in_executor(None, run_rerank_batch, b, [prepared],
                                                                    [False]))[0]
    except NoReranker as err:
        return _no_reranker(str(err))
    return JSONResponse(res)
