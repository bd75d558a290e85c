"""``POST /v1/rank``: a user, a context and candidates -> scores and an order (batched forwards)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from mmrank.errors import DataError
from mmrank.serve import schemas as S
from mmrank.serve.builder import RankQuery
from mmrank.serve.errors import data_error
from mmrank.serve.scoring import run_batch
from mmrank.serve.state import ERRORS, ServerState, get_state, read_access

router = APIRouter(dependencies=[Depends(read_access)])


@router.post("/v1/rank", response_model=S.RankOut, responses=ERRORS)
async def rank(body: S.RankIn, state: ServerState = Depends(get_state)) -> Any:
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
        return data_error(err)
    # run_batch builds plain JSON types in the documented shape (RankOut, checked by the tests):
    # returning it as a response skips a second validation of up to 1,000 items per request
    return JSONResponse(res)
