"""The ASGI layer under the routes (pure ASGI, no per-request task): the body limit (413), the
per-endpoint admission queues (503 with ``Retry-After``), the in-flight count the rank batcher reads,
request metrics by route template, and a ``Server-Timing`` header on every answer (the server's own
time, apart from the network and the client)."""

from __future__ import annotations

import json
import time

from fastapi import HTTPException

from mmrank.serve.limits import Refused

# (method, path) -> the endpoint whose admission queue it goes through
SHED = {("POST", "/v1/rank"): "rank", ("POST", "/v1/rerank"): "rerank", ("POST", "/v1/search"): "search",
        ("POST", "/v1/items"): "items"}


async def _answer(send, status: int, doc: dict, headers: list | None = None) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _timing(t0: float) -> tuple[bytes, bytes]:
    """``Server-Timing: app;dur=MS``: the time from the request's arrival in the app to its answer."""
    return b"server-timing", f"app;dur={(time.perf_counter() - t0) * 1e3:.2f}".encode()


class Guard:
    def __init__(self, app, state) -> None:  # noqa: ANN001 - state: mmrank.serve.state.ServerState
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        state = self.state
        method, path = scope.get("method", ""), scope.get("path")
        limit = state.settings.max_body_bytes
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
        if length is not None and length > limit:
            await _answer(send, 413, {"error": f"request body of {length} bytes is over the limit of "
                                               f"{limit} bytes", "field": None})
            state.metrics.request(scope, "POST", 413, 0.0)
            return
        endpoint = SHED.get((method, path))
        admission = state.admission[endpoint] if endpoint else None
        if admission is not None:
            try:
                await admission.acquire(t0, state.loop_lag.seconds)
            except Refused as r:
                await _answer(send, 503, {"error": f"the server is busy ({path} cannot start within its "
                                                   f"deadline of {state.settings.deadline_ms:g} ms): retry "
                                                   f"after {r.retry_after} s", "field": None},
                              [(b"retry-after", str(r.retry_after).encode()), _timing(t0)])
                state.metrics.refused.labels(path, r.reason).inc()
                state.metrics.request(scope, method, 503, time.perf_counter() - t0, route=path)
                return
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return msg

        status = 500

        async def send_status(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), _timing(t0)]}
            await send(msg)

        batcher = state.batcher if endpoint == "rank" else (state.rerank_batcher if endpoint == "rerank" else None)
        if batcher is not None:
            batcher.inflight += 1
        t1 = time.perf_counter()
        try:
            await self.app(scope, limited_receive, send_status)
        finally:
            if batcher is not None:
                batcher.inflight -= 1
            if admission is not None:
                admission.release(time.perf_counter() - t1)
            state.metrics.request(scope, method, status, time.perf_counter() - t0)
