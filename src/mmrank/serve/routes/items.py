"""``POST /v1/items`` (write key): ingest one item; ``GET /v1/items/{id}`` and ``.../image``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from mmrank.errors import DataError
from mmrank.serve import schemas as S
from mmrank.serve.bundle import Bundle
from mmrank.serve.errors import data_error
from mmrank.serve.images import TooLarge, decode_checked
from mmrank.serve.state import ERRORS, ServerState, get_bundle, get_state, read_access, require_write_key

router = APIRouter()


def _ingest(b: Bundle, body: S.ItemIn, max_bytes: int, max_pixels: int) -> dict:
    """On a worker thread: decode and check the photo (header first), then encode, write, index."""
    image = decode_checked(body.image_b64, "image_b64", max_bytes, max_pixels)
    item = {"item_id": body.item_id, "title": body.title, "image": image, "category": body.category,
            "created_at": body.created_at if body.created_at is not None else int(time.time()),
            "attributes": body.attributes}
    t = b.store.ingest(item)
    if b.sid is not None:  # semantic IDs at once: nearest codewords on the residuals (stored codebooks)
        ids = np.array([body.item_id], np.int64)
        vec, _ = b.store.vectors(ids)
        t["sid_codes"] = [int(c) for c in b.sid.codes_for(ids, vec)[0]]
    return t


@router.post("/v1/items", response_model=S.ItemOut, status_code=201, responses=ERRORS,
             dependencies=[Depends(require_write_key)])
async def add_item(body: S.ItemIn, state: ServerState = Depends(get_state)) -> Any:
    from mmrank.store.items import ItemExists

    b = state.current()
    s = state.settings
    try:
        t = await asyncio.get_running_loop().run_in_executor(None, _ingest, b, body, s.max_image_bytes,
                                                             s.max_image_pixels)
    except ItemExists as err:
        return data_error(err, 409)
    except TooLarge as err:
        return data_error(err, 413)
    except DataError as err:
        if err.column == "image":
            err.column = "image_b64"
        return data_error(err)
    state.metrics.ingested.inc()
    return {"item_id": body.item_id, "encoder_version": b.encoder_version,
            "timings_ms": {k: v for k, v in t.items() if k.endswith("_ms")}, "sid_codes": t.get("sid_codes")}


@router.get("/v1/items/{item_id}", response_model=S.ItemInfo, responses={404: {"model": S.ErrorOut}},
            dependencies=[Depends(read_access)])
async def item_info(item_id: int, b: Bundle = Depends(get_bundle)) -> Any:
    if not 0 <= item_id <= S.INT64_MAX:
        raise HTTPException(404, f"no item {item_id}")
    ids = np.array([item_id], np.int64)
    in_table = bool(b.store.vectors(ids)[1][0])
    cats, titles = b.store.meta(ids)
    if not in_table and not titles[0]:
        raise HTTPException(404, f"no item {item_id}")
    return {"item_id": item_id, "in_table": in_table, "title": titles[0], "category_id": int(cats[0])}


@router.get("/v1/items/{item_id}/image", responses={404: {"model": S.ErrorOut}}, response_class=Response,
            dependencies=[Depends(read_access)])
async def item_image(item_id: int, b: Bundle = Depends(get_bundle)) -> Response:
    img = b.store.image(item_id) if 0 <= item_id <= S.INT64_MAX else None
    if not img:
        raise HTTPException(404, f"no photo of item {item_id}")
    ctype = "image/png" if img[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return Response(img, media_type=ctype, headers={"Cache-Control": "max-age=3600"})
