"""``POST /v1/search``: text or a photo -> the top-k items of the embedding table."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from mmrank.errors import DataError
from mmrank.serve import schemas as S
from mmrank.serve.bundle import Bundle
from mmrank.serve.errors import data_error
from mmrank.serve.images import TooLarge, decode_checked
from mmrank.serve.state import ERRORS, ServerState, get_state, read_access

router = APIRouter(dependencies=[Depends(read_access)])


def _search_image(b: Bundle, text: str, k: int, max_bytes: int, max_pixels: int) -> list[dict]:
    """On a worker thread: decode and check the photo (header first), then encode and search."""
    return b.store.search_image(decode_checked(text, "image_b64", max_bytes, max_pixels), k)


@router.post("/v1/search", response_model=S.SearchOut, responses=ERRORS)
async def search(body: S.SearchIn, state: ServerState = Depends(get_state)) -> Any:
    b = state.current()
    s = state.settings
    loop = asyncio.get_running_loop()
    try:
        if body.text is not None:
            hits = await loop.run_in_executor(None, b.store.search_text, body.text, body.k)
        else:
            hits = await loop.run_in_executor(None, _search_image, b, body.image_b64, body.k,
                                              s.max_image_bytes, s.max_image_pixels)
    except TooLarge as err:
        return data_error(err, 413)
    except DataError as err:
        if err.column in ("image", None) and body.image_b64 is not None:
            err.column = "image_b64"
        elif err.column in ("title", "text", None):
            err.column = "text"
        return data_error(err)
    return {"encoder_version": b.encoder_version, "results": hits}
