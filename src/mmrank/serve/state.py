"""What the routes share: the server's state (``request.app.state.mmrank``) and the dependencies that
reach it, check keys and take rate-limit tokens."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from mmrank.serve import schemas as S
from mmrank.serve.batching import RankBatcher
from mmrank.serve.bundle import Bundle
from mmrank.serve.config import SHED_ENDPOINTS, Settings
from mmrank.serve.limits import Admission, LoopLag, Refused, TokenBuckets
from mmrank.serve.metrics import Metrics

# the error bodies a route documents in the OpenAPI schema
ERRORS = {code: {"model": S.ErrorOut} for code in (401, 409, 413, 422, 429, 503)}


class ServerState:
    """One server process's state: settings, the loaded bundle (swapped whole), the batcher, metrics,
    the per-endpoint admission queues and the read rate limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bundle: Bundle | None = None
        self.batcher: RankBatcher | None = None
        self.rerank_batcher: RankBatcher | None = None  # /v1/rerank's: its own queue and forwards
        self.metrics = Metrics()
        self.swap_lock = asyncio.Lock()
        self.swaps = 0
        deadline = settings.deadline_ms / 1e3
        self.admission = {name: Admission(settings.limit(name).concurrency, settings.limit(name).queue,
                                          deadline) for name in SHED_ENDPOINTS}
        self.loop_lag = LoopLag()
        self.rates = TokenBuckets(settings.rate_per_s, settings.rate_burst) if settings.rate_per_s > 0 else None

    def current(self) -> Bundle:
        b = self.bundle
        if b is None:
            raise HTTPException(503, "the server is still loading its model: try again in a few seconds",
                                headers={"Retry-After": "5"})
        return b


def get_state(request: Request) -> ServerState:
    return request.app.state.mmrank


def get_bundle(request: Request) -> Bundle:
    return get_state(request).current()


key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                          description="the server's write key (MMRANK_API_KEY or --api-key-file), or its "
                                      "read key for reads when it has one")


def _same(given: str | None, expected: str | None) -> bool:
    # constant time in the key's content (hmac.compare_digest on bytes)
    return (given is not None and expected is not None
            and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")))


def require_write_key(request: Request, key: str | None = Depends(key_header)) -> None:
    expected = get_state(request).settings.api_key
    if expected is None:
        raise HTTPException(401, "writes are disabled: this server has no API key "
                                 "(set MMRANK_API_KEY or --api-key-file)",
                            headers={"WWW-Authenticate": "ApiKey"})
    if not _same(key, expected):
        raise HTTPException(401, "missing or invalid API key (header X-API-Key)",
                            headers={"WWW-Authenticate": "ApiKey"})


def read_access(request: Request, key: str | None = Depends(key_header)) -> None:
    """A read: needs the read key (or the write key) when the server has one; takes a token from the
    client's bucket (its key, else its address) when reads are rate-limited."""
    state = get_state(request)
    s = state.settings
    if s.read_key is not None and not (_same(key, s.read_key) or _same(key, s.api_key)):
        raise HTTPException(401, "missing or invalid read key (header X-API-Key)",
                            headers={"WWW-Authenticate": "ApiKey"})
    if state.rates is not None:
        client = f"key:{key}" if key else f"ip:{request.client.host if request.client else '?'}"
        try:
            state.rates.take(client)
        except Refused as r:
            state.metrics.refused.labels(request.url.path, "rate").inc()
            raise HTTPException(429, f"over the rate limit of {s.rate_per_s:g} requests/s: retry after "
                                     f"{r.retry_after} s", headers={"Retry-After": str(r.retry_after)}) from None
