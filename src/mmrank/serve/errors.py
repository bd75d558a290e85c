"""How errors are answered: ``{"error", "field"[, "detail"]}`` with the field at fault named."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mmrank.errors import DataError


def field_name(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def data_error(err: DataError, status: int = 422) -> JSONResponse:
    return JSONResponse({"error": err.detail, "field": err.column}, status_code=status)


async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    field = field_name(first.get("loc", ()))
    detail = [{"field": field_name(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in errs[:20]]
    return JSONResponse({"error": f"field '{field}': {first.get('msg', '')}", "field": field,
                         "detail": detail}, status_code=422)


async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
