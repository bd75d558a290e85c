"""``POST /v1/creative``: an item, the user's region and recent creative clicks -> the selector's
creative and its reason in words (:mod:`mmrank.creative.serving`; 409 when the run has no selector:
run ``mmrank creative generate`` and ``mmrank creative compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mmrank.errors import DataError
from mmrank.serve.errors import data_error
from mmrank.serve.state import ERRORS, ServerState, get_state, read_access

router = APIRouter(dependencies=[Depends(read_access)])
_CACHE: dict[str, tuple[float, Any]] = {}


class CreativeIn(BaseModel):
    item_id: int
    region: int = Field(0, ge=0)
    recent_clicks: list[int] = Field(default_factory=list, max_length=50,
                                     description="creative ids the user clicked, oldest first")


class CreativeOut(BaseModel):
    item_id: int
    creative_id: int
    k: int = Field(description="0 = the item's default creative")
    default_creative_id: int
    attributes: dict[str, str]
    reason: str
    scores: list[float] = Field(description="the selector's click log-odds of each of the item's creatives")


def _chooser(run: Path):
    from mmrank.creative.serving import CreativeChooser

    path = run / "creative" / "selector.json"
    stamp = path.stat().st_mtime if path.exists() else -1.0
    hit = _CACHE.get(str(run))
    if hit is None or hit[0] != stamp:
        hit = (stamp, CreativeChooser.load(run))
        _CACHE[str(run)] = hit
    return hit[1]


@router.post("/v1/creative", response_model=CreativeOut, responses=ERRORS)
async def creative(body: CreativeIn, state: ServerState = Depends(get_state)) -> Any:
    try:
        chooser = _chooser(Path(state.settings.run))
    except DataError as err:
        return JSONResponse({"error": f"this server has no creative selector to serve ({err})",
                             "field": None}, status_code=409)
    try:
        return JSONResponse(chooser.choose(body.item_id, body.region, body.recent_clicks))
    except DataError as err:
        return data_error(err)
