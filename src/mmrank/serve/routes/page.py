"""``GET /``: the search-and-rank page; ``GET /v1/users``: the logged users its picker offers."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from mmrank.serve import schemas as S
from mmrank.serve.bundle import Bundle
from mmrank.serve.state import get_bundle, read_access

PAGE = Path(__file__).resolve().parents[1] / "page.html"

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


@router.get("/v1/users", response_model=list[S.UserInfo], dependencies=[Depends(read_access)])
async def users(limit: int = Query(20, ge=1, le=200), b: Bundle = Depends(get_bundle)) -> list[dict]:
    return b.users.sample(limit)
