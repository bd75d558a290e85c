"""The HTTP app in process (FastAPI's TestClient): rank, items, search, validation, auth, limits,
metrics, hot swap. Real bundle, real encoder, real table; no server process (see test_serve_e2e)."""

from __future__ import annotations

import base64
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

torch.set_num_threads(1)
KEY = "test-key-0123456789"


def _client(run: Path):
    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    app = create_app(Settings(run=run, api_key=KEY, max_body_bytes=256 << 10, threads=1))
    with TestClient(app) as c:
        c.run = run
        yield c


@pytest.fixture()
def client(serving_run: Path):
    """The app on the shared serving run (tests that only read, or are refused before writing)."""
    yield from _client(serving_run)


@pytest.fixture()
def write_client(serving_run_copy: Path):
    """The app on a private copy of the run (tests that write)."""
    yield from _client(serving_run_copy)


def _catalog(run: Path):
    t = pq.read_table(run / "data" / "items.parquet", columns=["item_id", "title", "image", "category"])
    return {c: t.column(c).to_pylist() for c in t.column_names}


def test_rank_orders_known_candidates_and_reports_unknown_ones(client) -> None:
    cat = _catalog(client.run)
    user = client.get("/v1/users", params={"limit": 1}).json()[0]
    cands = cat["item_id"][:30] + [123456789]
    r = client.post("/v1/rank", json={"user": {"user_id": user["user_id"]}, "candidates": cands,
                                      "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    from mmrank.serve.schemas import RankOut

    RankOut.model_validate(body)  # the documented shape (the handler returns it unvalidated)
    assert body["user_known"] and body["history_length"] == user["history_length"] > 0
    assert [u["item_id"] for u in body["unknown"]] == [123456789]
    got = [i["item_id"] for i in body["items"]]
    assert sorted(got) == sorted(cat["item_id"][:30])  # every known candidate scored, none dropped
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and [i["rank"] for i in body["items"]] == list(range(30))
    assert all(0 < s < 1 for s in scores)
    first = body["items"][0]
    assert sum(first["simtier"]) == body["history_length"]  # every history item has a vector here
    assert len(first["simtier"]) == 20 and first["title"]
    # the user's logged history drives the scores: another history, other scores
    r2 = client.post("/v1/rank", json={"user": {"history": cat["item_id"][200:210]}, "candidates": cands})
    assert r2.json()["history_length"] == 10 and not r2.json()["user_known"]
    assert {i["item_id"]: i["score"] for i in r2.json()["items"]} != {i["item_id"]: i["score"] for i in body["items"]}


def test_posted_item_is_rankable_from_content_and_searchable_at_once(write_client) -> None:
    client = write_client
    cat = _catalog(client.run)
    item = {"item_id": 777000111, "title": "emerald linen summer dress", "category": cat["category"][5],
            "image_b64": base64.b64encode(cat["image"][5]).decode()}
    r = client.post("/v1/items", json=item, headers={"X-API-Key": KEY})
    assert r.status_code == 201, r.text
    r = client.post("/v1/rank", json={"user": {"history": cat["item_id"][:5]},
                                      "candidates": [777000111, cat["item_id"][1]]})
    items = {i["item_id"]: i for i in r.json()["items"]}
    assert r.json()["unknown"] == [] and not items[777000111]["id_known"] and items[cat["item_id"][1]]["id_known"]
    r = client.post("/v1/search", json={"text": "emerald linen summer dress", "k": 5})
    assert 777000111 in [h["item_id"] for h in r.json()["results"]]
    assert client.get("/v1/items/777000111").json()["title"] == item["title"]
    assert client.get("/v1/items/777000111/image").content == cat["image"][5]
    r = client.post("/v1/items", json=item, headers={"X-API-Key": KEY})
    assert r.status_code == 409 and r.json()["field"] == "item_id"


def test_search_by_text_and_by_image(client) -> None:
    cat = _catalog(client.run)
    r = client.post("/v1/search", json={"text": cat["title"][3], "k": 7})
    assert r.status_code == 200 and len(r.json()["results"]) == 7
    s = [h["score"] for h in r.json()["results"]]
    assert s == sorted(s, reverse=True)
    r = client.post("/v1/search", json={"image_b64": base64.b64encode(cat["image"][3]).decode(), "k": 4})
    assert r.status_code == 200 and len(r.json()["results"]) == 4


@pytest.mark.parametrize("body, field", [
    ({"candidates": []}, "candidates"),
    ({"candidates": [1, "x"]}, "candidates.1"),
    ({"candidates": [1, 1]}, "candidates"),
    ({"candidates": [-3]}, "candidates.0"),
    ({"candidates": list(range(1001))}, "candidates"),
    ({"candidates": [1], "user": {"user_id": "bob"}}, "user.user_id"),
    ({"candidates": [1], "context": {"region": 10**6}}, "context.region"),
    ({"candidates": [1], "colour": "red"}, "colour"),
    ({}, "candidates"),
])
def test_rank_validation_names_the_field(client, body: dict, field: str) -> None:
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and field in r.json()["error"]


def test_search_and_items_validation(client) -> None:
    r = client.post("/v1/search", json={"text": "a", "image_b64": "AAAA"})
    assert r.status_code == 422
    r = client.post("/v1/search", json={"image_b64": "not base64!!"})
    assert r.status_code == 422 and r.json()["field"] == "image_b64"
    r = client.post("/v1/search", json={"image_b64": base64.b64encode(b"plain text").decode()})
    assert r.status_code == 422 and r.json()["field"] == "image_b64"
    r = client.post("/v1/items", headers={"X-API-Key": KEY},
                    json={"item_id": 5, "title": "x", "image_b64": base64.b64encode(b"nope").decode()})
    assert r.status_code == 422 and r.json()["field"] == "image_b64"
    r = client.post("/v1/items", headers={"X-API-Key": KEY}, json={"item_id": 5, "title": " ", "image_b64": "AA"})
    assert r.status_code == 422 and r.json()["field"] == "title"


def test_writes_need_the_key_and_big_bodies_get_413(client) -> None:
    item = {"item_id": 5, "title": "t", "image_b64": "AAAA"}
    assert client.post("/v1/items", json=item).status_code == 401
    assert client.post("/v1/items", json=item, headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert client.post("/v1/items", json=item, headers={"X-API-Key": ""}).status_code == 401
    assert client.post("/v1/admin/reload", json={}).status_code == 401
    big = {"item_id": 5, "title": "t", "image_b64": "A" * (300 << 10)}
    r = client.post("/v1/items", json=big, headers={"X-API-Key": KEY})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * (10 << 10)

    r = client.post("/v1/rank", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_no_key_configured_means_writes_are_refused(serving_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    with TestClient(create_app(Settings(run=serving_run, api_key=None, threads=1))) as c:
        r = c.post("/v1/items", json={"item_id": 5, "title": "t", "image_b64": "AAAA"},
                   headers={"X-API-Key": ""})
        assert r.status_code == 401 and "no API key" in r.json()["error"]


def test_metrics_health_openapi_and_page(client) -> None:
    cat = _catalog(client.run)
    client.post("/v1/rank", json={"candidates": cat["item_id"][:3]})
    assert client.get("/healthz").json()["status"] == "ok"
    m = client.get("/metrics").text
    for name in ("mmrank_requests_total", "mmrank_request_seconds_bucket", "mmrank_batch_rows_bucket",
                 "mmrank_batch_requests_bucket", "mmrank_table_items", "mmrank_bundle_info"):
        assert name in m
    assert 'route="/v1/rank"' in m and f"mmrank_table_items {float(len(cat['item_id']))}" in m
    spec = client.get("/openapi.json").json()
    assert {"/v1/rank", "/v1/items", "/v1/search", "/healthz"} <= set(spec["paths"])
    page = client.get("/").text
    assert 'id="text-query"' in page and 'id="image-file"' in page and "After re-ranking" in page


def test_reload_swaps_to_another_bundle_and_refuses_a_broken_one(client) -> None:
    before = client.get("/v1/bundle").json()
    r = client.post("/v1/admin/reload", json={"strategy": "id"}, headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    assert r.json()["previous"] == before["bundle"] and r.json()["strategy"] == "id"
    cat = _catalog(client.run)
    assert client.post("/v1/rank", json={"candidates": cat["item_id"][:3]}).json()["strategy"] == "id"
    r = client.post("/v1/admin/reload", json={"strategy": "make"}, headers={"X-API-Key": KEY})
    assert r.status_code == 409 and "still serving" in r.json()["error"]
    assert client.get("/v1/bundle").json()["strategy"] == "id"
    assert "mmrank_bundle_swaps_total 1.0" in client.get("/metrics").text


def test_no_internal_module_names_reach_a_user(serving_run_copy: Path) -> None:
    """A run with R/rerank/ but no re-ranker this server can load: the API and the page say what to do,
    in words a user knows, never a Python module name."""
    import re

    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    (serving_run_copy / "rerank").mkdir()
    module = re.compile(r"mmrank\.[a-z_]+")
    with TestClient(create_app(Settings(run=serving_run_copy, threads=1))) as c:
        status = c.get("/v1/bundle").json()["rerank"]
        cat = _catalog(serving_run_copy)
        ranked = c.post("/v1/rank", json={"candidates": cat["item_id"][:3]}).json()
        texts = {"bundle": status, "rank": ranked["rerank_status"], "page": c.get("/").text,
                 "openapi": c.get("/openapi.json").text}
    assert "absent" in status and "mmrank rerank train" in status  # R/rerank/ without a trained model
    assert {k: module.findall(v) for k, v in texts.items()} == {k: [] for k in texts}


def test_an_image_bomb_is_refused_in_milliseconds_and_the_next_request_is_served(client) -> None:
    """A PNG of 20 KB that declares 13,000 x 13,000 pixels (seconds of CPU and ~500 MB to decode):
    refused from its header, on /v1/search and /v1/items, well within 50 ms."""
    import time

    from mmrank.testing.serving import bomb_png

    png = bomb_png(13_000, 13_000)
    assert len(png) < 200 << 10
    b64 = base64.b64encode(png).decode()
    cat = _catalog(client.run)
    client.post("/v1/search", json={"text": cat["title"][0], "k": 3})  # warm
    for path, body, headers in (("/v1/search", {"image_b64": b64, "k": 3}, None),
                                ("/v1/items", {"item_id": 991, "title": "huge", "image_b64": b64},
                                 {"X-API-Key": KEY})):
        t0 = time.perf_counter()
        r = client.post(path, json=body, headers=headers)
        elapsed = time.perf_counter() - t0
        assert r.status_code == 413, r.text
        assert r.json()["field"] == "image_b64" and "13000 x 13000 pixels" in r.json()["error"]
        assert elapsed < 0.05, f"{path}: {elapsed * 1e3:.1f} ms"
        r = client.post("/v1/search", json={"image_b64": base64.b64encode(cat["image"][3]).decode(), "k": 4})
        assert r.status_code == 200 and len(r.json()["results"]) == 4
    assert client.get("/v1/items/991").status_code == 404  # nothing was written


def test_image_byte_cap(serving_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    cat = _catalog(serving_run)
    photo = cat["image"][3]
    app = create_app(Settings(run=serving_run, api_key=KEY, threads=1, max_image_bytes=len(photo) - 1))
    with TestClient(app) as c:
        r = c.post("/v1/search", json={"image_b64": base64.b64encode(photo).decode()})
        assert r.status_code == 413 and f"{len(photo)} bytes" in r.json()["error"]
        r = c.post("/v1/items", headers={"X-API-Key": KEY},
                   json={"item_id": 992, "title": "t", "image_b64": base64.b64encode(photo).decode()})
        assert r.status_code == 413 and r.json()["field"] == "image_b64"
        r = c.post("/v1/search", json={"image_b64": base64.b64encode(cat["image"][4][:40]).decode()})
        assert r.status_code == 422  # a cut header is not an image: 422 as before


def test_read_key_and_rate_limit(serving_run: Path) -> None:
    """With a read key, reads need it (or the write key); writes still need the write key; each key
    has its own token bucket, and a request without a token gets 429 with Retry-After, counted."""
    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    read = "read-key-abcdefgh"
    cat = _catalog(serving_run)
    body = {"candidates": cat["item_id"][:3]}
    app = create_app(Settings(run=serving_run, api_key=KEY, read_key=read, threads=1,
                              rate_per_s=0.01, rate_burst=3))
    with TestClient(app) as c:
        assert c.post("/v1/rank", json=body).status_code == 401
        assert c.post("/v1/rank", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/healthz").status_code == 200  # health and metrics take no key
        got = [c.post("/v1/rank", json=body, headers={"X-API-Key": read}).status_code for _ in range(4)]
        assert got == [200, 200, 200, 429]
        r = c.get("/v1/users", headers={"X-API-Key": read})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert c.post("/v1/search", json={"text": "dress"}, headers={"X-API-Key": KEY}).status_code == 200
        r = c.post("/v1/items", json={"item_id": 5, "title": "t", "image_b64": "AAAA"},
                   headers={"X-API-Key": read})
        assert r.status_code == 401  # the read key does not write
        m = c.get("/metrics").text
    assert 'mmrank_refused_total{reason="rate",route="/v1/rank"} 1.0' in m
    assert 'mmrank_refused_total{reason="rate",route="/v1/users"} 1.0' in m


def test_reads_are_not_rate_limited_on_loopback_by_default() -> None:
    from mmrank.serve.config import Settings, default_read_rate

    assert Settings(run=Path(".")).rate_per_s == 0 and Settings(run=Path(".")).read_key is None
    assert default_read_rate("127.0.0.1") == default_read_rate("::1") == default_read_rate("localhost") == 0
    assert default_read_rate("0.0.0.0") == default_read_rate("10.1.2.3") == default_read_rate("shop.example") == 100
