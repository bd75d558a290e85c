"""How errors are answered: ``{"error", "field"[, "detail"]}`` with the field at fault named."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mmrank.errors import DataError, MMRankError


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


STORE_RETRY_AFTER = 2  # seconds: a shared item store (Redis) restarting is back within a few


def store_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it was raised from or while handling) is the shared item store
    (Redis) not answering: a connection refused, reset or timed out."""
    try:
        import redis
    except ImportError:
        return False
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


async def on_mmrank_error(request: Request, exc: MMRankError) -> JSONResponse:
    """An error of mmrank's own that no route answered: 503 when the item store is unavailable (it
    comes back), else 500 with its one line."""
    if store_unavailable(exc):
        return await on_store_down(request, exc)
    return JSONResponse({"error": " ".join(str(exc).split()), "field": None}, status_code=500)


async def on_store_down(request: Request, exc: Exception) -> JSONResponse:
    """The shared item store (Redis) did not answer: 503, try again shortly (nothing is acknowledged)."""
    return JSONResponse({"error": f"the item store is unavailable ({type(exc).__name__}): the request was not completed, "
                                  f"retry after {STORE_RETRY_AFTER} s", "field": None},
                        status_code=503, headers={"Retry-After": str(STORE_RETRY_AFTER)})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(MMRankError, on_mmrank_error)
    try:
        import redis
    except ImportError:  # the redis extra is not installed: no Redis store to lose
        return
    for cls in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        app.add_exception_handler(cls, on_store_down)
