"""The creative routes (:mod:`mmrank.creative.serving`):

* ``POST /v1/creative``: an item and a user (a logged ``user_id``, or a region and recent creative
  clicks) -> the selector's creative and its reason in words (409 when the run has no selector: run
  ``mmrank creative generate`` and ``mmrank creative compare``).
* ``GET /v1/creatives``: whether the run has creatives and a selector (always 200; the page asks first).
* ``GET /v1/items/{id}/creatives`` and ``GET /v1/creatives/{id}/image``: an item's creatives and a
  creative's PNG, for the page (404 for an unknown item or creative, 409 when the run has no creatives).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mmrank.errors import DataError
from mmrank.serve import schemas as S
from mmrank.serve.errors import data_error
from mmrank.serve.state import ERRORS, ServerState, get_state, read_access

router = APIRouter(dependencies=[Depends(read_access)])
_CACHE: dict[tuple[str, str], tuple[tuple[float, ...], Any]] = {}
NOT_FOUND = {404: {"model": S.ErrorOut}}


class CreativeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: int
    user_id: int | None = Field(None, description="a user of the run: their region and recent creative "
                                "clicks are read from the creative log (do not send those with it)")
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
    user_id: int | None = None
    region: int = Field(description="the region the choice was made for")
    recent_clicks: list[int] = Field(description="the creative clicks the choice read (the last 5)")


class CreativeInfo(BaseModel):
    creative_id: int
    k: int
    is_default: bool
    attributes: dict[str, str]


class ItemCreatives(BaseModel):
    item_id: int
    creatives: list[CreativeInfo]


class CreativesStatus(BaseModel):
    creatives: bool = Field(description="whether the run has creatives (R/data/creatives.parquet)")
    selector: bool = Field(description="whether POST /v1/creative can choose (R/creative/selector.json)")
    items: int = 0
    per_item: int = 0
    note: str | None = Field(None, description="what is missing and the command that makes it")


def _cached(name: str, run: Path, files: list[Path], make: Callable[[], Any]) -> Any:
    """``make()``, made again when one of ``files`` changes (or appears)."""
    stamp = tuple(p.stat().st_mtime if p.exists() else -1.0 for p in files)
    hit = _CACHE.get((name, str(run)))
    if hit is None or hit[0] != stamp:
        hit = (stamp, make())
        _CACHE[(name, str(run))] = hit
    return hit[1]


def _chooser(run: Path):
    from mmrank.creative.serving import CreativeChooser

    return _cached("chooser", run, [run / "creative" / "selector.json", run / "data" / "creatives.parquet"],
                   lambda: CreativeChooser.load(run))


def _catalog(run: Path):
    from mmrank.creative.serving import CreativeCatalog

    data = run / "data"
    return _cached("catalog", run, [data / "creatives.parquet", data / "creative_log.parquet",
                                    data / "users.parquet"], lambda: CreativeCatalog.load(run))


def _no_creatives(err: DataError) -> JSONResponse:
    return JSONResponse({"error": f"this server has no creatives to show ({err})", "field": None},
                        status_code=409)


async def _off_loop(fn: Callable, *args) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@router.post("/v1/creative", response_model=CreativeOut, responses=ERRORS)
async def creative(body: CreativeIn, state: ServerState = Depends(get_state)) -> Any:
    run = Path(state.settings.run)
    try:
        chooser = _chooser(run)
    except DataError as err:
        return JSONResponse({"error": f"this server has no creative selector to serve ({err})",
                             "field": None}, status_code=409)
    region, clicks = body.region, body.recent_clicks
    try:
        if body.user_id is not None:
            given = sorted({"region", "recent_clicks"} & body.model_fields_set)
            if given:
                raise DataError(f"give either user_id or {' and '.join(given)}: a user's region and recent "
                                f"clicks are read from the creative log", column="user_id")
            region, clicks = (await _off_loop(_catalog, run)).user(body.user_id)
        out = chooser.choose(body.item_id, region, clicks)
    except DataError as err:
        return data_error(err)
    return JSONResponse({**out, "user_id": body.user_id, "region": region,
                         "recent_clicks": clicks[-chooser.history:]})


@router.get("/v1/creatives", response_model=CreativesStatus)
async def creatives_status(state: ServerState = Depends(get_state)) -> Any:
    run = Path(state.settings.run)
    try:
        cat = await _off_loop(_catalog, run)
    except DataError:
        return {"creatives": False, "selector": False,
                "note": "this run has no creatives (run `mmrank creative generate`)"}
    selector = (run / "creative" / "selector.json").exists()
    return {"creatives": True, "selector": selector, "items": len(cat.creatives.item_ids),
            "per_item": int(cat.creatives.creative_ids.shape[1]),
            "note": None if selector else "no creative selector yet (run `mmrank creative compare`)"}


@router.get("/v1/items/{item_id}/creatives", response_model=ItemCreatives, responses={**NOT_FOUND, **ERRORS})
async def item_creatives(item_id: int, state: ServerState = Depends(get_state)) -> Any:
    from mmrank.creative.serving import UnknownCreative

    try:
        cat = await _off_loop(_catalog, Path(state.settings.run))
    except DataError as err:
        return _no_creatives(err)
    try:
        return {"item_id": item_id, "creatives": cat.item(item_id)}
    except UnknownCreative as err:
        return data_error(err, 404)


@router.get("/v1/creatives/{creative_id}/image", response_class=Response, responses={**NOT_FOUND, **ERRORS})
async def creative_image(creative_id: int, state: ServerState = Depends(get_state)) -> Response:
    from mmrank.creative.serving import UnknownCreative

    try:
        cat = await _off_loop(_catalog, Path(state.settings.run))
        png = await _off_loop(cat.image, creative_id)
    except UnknownCreative as err:
        return data_error(err, 404)
    except DataError as err:
        return _no_creatives(err)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
