"""``POST /v1/rerank`` in process (FastAPI's TestClient) against ``mmrank rerank apply`` offline: the same
order and scores for a trained ARMMT and a trained SEQ+MD on the serving run's own test lists; and
both against the scores training-time code gives the same lists (so the service's point-in-time
history and sales are the logs'). API key, 422 naming the field, 409 without a re-ranker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(1)
KEY = "test-key-0123456789"
READ = "read-key-0123456789"
MODELS = ("armmt", "seqmd")
N_LISTS = 12


@pytest.fixture(scope="module")
def rerank_run(serving_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the serving run with a tiny ARMMT and a tiny SEQ+MD trained (latest 400 training lists)."""
    from mmrank.rerank.stage import train_model
    from mmrank.rerank.trainer import RerankTrainConfig
    from mmrank.threads import limited

    run = tmp_path_factory.mktemp("rerank-serving") / "run"
    shutil.copytree(serving_run, run)
    with limited(1):
        for m in MODELS:
            train_model(run, m, train_cfg=RerankTrainConfig(max_train_lists=400), progress=False)
    return run


def _lists(run: Path) -> tuple[list[dict], np.ndarray]:
    """The first test lists of the run as /v1/rerank bodies: context and candidates with their
    production scores only (history, sales, price and category are the server's to fill in)."""
    from mmrank.rerank.data import load_lists
    from mmrank.rerank.serving import logged_list_bodies

    lists = load_lists(run / "data" / "lists.parquet")
    rows = lists.test_rows()[:N_LISTS]
    docs = logged_list_bodies(lists, rows, with_request_id=True)
    return docs, rows


def _client(run: Path, **settings):
    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    return TestClient(create_app(Settings(run=run, api_key=KEY, threads=1, **settings)))


def _apply(run: Path, model: str, path: Path, tmp_path: Path) -> list[dict]:
    from mmrank.cli import app

    out = tmp_path / f"{model}.jsonl"
    res = CliRunner().invoke(app, ["rerank", "apply", "--run", str(run), "--lists", str(path), "--model", model,
                                   "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("model", MODELS)
def test_rerank_endpoint_gives_the_offline_order(rerank_run: Path, tmp_path: Path, model: str) -> None:
    from mmrank.rerank.artifacts import load_model
    from mmrank.rerank.trainer import predict
    from mmrank.serve.schemas import RerankOut

    docs, rows = _lists(rerank_run)
    assert any("query" in d for d in docs)
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    offline = _apply(rerank_run, model, path, tmp_path)
    with _client(rerank_run, rerank_model=model) as c:
        online = []
        for d in docs:
            r = c.post("/v1/rerank", json=d)
            assert r.status_code == 200, r.text
            RerankOut.model_validate(r.json())
            online.append(r.json())
        rank = c.post("/v1/rank", json={"user": {"user_id": docs[0]["user_id"]},
                                        "candidates": [x["item_id"] for x in docs[0]["candidates"]]}).json()
    assert len(offline) == len(online) == len(docs)
    for d, off, on in zip(docs, offline, online):
        assert on["model"] == off["model"] == model and on["request_id"] == off["request_id"] == d["request_id"]
        assert [i["item_id"] for i in on["items"]] == [i["item_id"] for i in off["items"]]
        assert np.allclose([i["score"] for i in on["items"]], [i["score"] for i in off["items"]], rtol=0, atol=1e-6)
        assert sorted(i["item_id"] for i in on["items"]) == sorted(x["item_id"] for x in d["candidates"])
    # the seam of /v1/rank: its candidates in the same re-ranker's order
    assert rank["rerank_status"].startswith(f"loaded {model}") and rank["reranked"] is not None
    assert sorted(i["item_id"] for i in rank["reranked"]) == sorted(i["item_id"] for i in rank["items"])
    # training-time code on the logged lists (their own histories, sales, prices, categories) scores the
    # same: what the service filled in from the logs is what the lists hold as of each request's ts
    net, data = load_model(rerank_run, model)
    cands, scores = predict(net, data, rows, "all")
    for k, off in enumerate(offline):
        got = {i["item_id"]: i["score"] for i in off["items"]}
        want = dict(zip(data.lists.item_id[cands[k]].tolist(), scores["rank"][k]))
        assert got.keys() == want.keys()
        assert max(abs(got[i] - want[i]) for i in got) < 1e-4


def test_rerank_checks_keys_and_bodies(rerank_run: Path, tmp_path: Path) -> None:
    docs, _ = _lists(rerank_run)
    good = docs[0]
    with _client(rerank_run, read_key=READ) as c:
        assert c.post("/v1/rerank", json=good).status_code == 401
        assert c.post("/v1/rerank", json=good, headers={"X-API-Key": "wrong"}).status_code == 401
        h = {"X-API-Key": READ}
        assert c.post("/v1/rerank", json=good, headers=h).status_code == 200
        bad = {
            "candidates": {**good, "candidates": []},
            "candidates.0.item_id": {**good, "candidates": [{"item_id": -3}]},
            "region": {k: v for k, v in good.items() if k != "region"},
            "candidates.0.colour": {**good, "candidates": [{"item_id": 1, "colour": "red"}]},
            "candidates.1.price": {**good, "candidates": [good["candidates"][0], {"item_id": 987654321}]},
        }
        for field, body in bad.items():
            if field == "candidates.1.price":
                body["candidates"] = [{"item_id": x["item_id"]} for x in body["candidates"]]
            r = c.post("/v1/rerank", json=body, headers=h)
            assert r.status_code == 422, (field, r.text)
            assert r.json()["field"] == field, (field, r.json())
        r = c.post("/v1/rerank", json={**good, "region": 999}, headers=h)
        assert r.status_code == 422 and r.json()["field"] == "region"
        r = c.post("/v1/rerank", json={**good, "candidates": [good["candidates"][0]] * 2}, headers=h)
        assert r.status_code == 422 and "twice" in r.json()["error"]
        text = c.get("/metrics").text
        assert 'mmrank_request_seconds_count{route="/v1/rerank"}' in text
        assert "mmrank_rerank_forward_seconds_count" in text


def test_rerank_without_a_trained_reranker_is_409(serving_run: Path) -> None:
    docs, _ = _lists(serving_run)
    with _client(serving_run) as c:
        r = c.post("/v1/rerank", json=docs[0])
    assert r.status_code == 409
    assert "no trained re-ranker" in r.json()["error"] and "mmrank rerank train" in r.json()["error"]


def test_rerank_apply_names_the_line_and_field_of_bad_input(rerank_run: Path, tmp_path: Path) -> None:
    from mmrank.cli import app
    from mmrank.errors import DataError
    from mmrank.testing.presets import run_mmrank

    docs, _ = _lists(rerank_run)
    path = tmp_path / "lists.jsonl"
    bad = {**docs[1], "candidates": [{"item_id": 987654321}]}
    path.write_text(json.dumps(docs[0]) + "\n" + json.dumps(bad) + "\n")
    res = run_mmrank("rerank", "apply", "--run", rerank_run, "--lists", path, "--model", "seqmd")
    assert res.returncode == 2 and res.stdout == ""
    msg = res.stderr.strip()
    assert len(msg.splitlines()) == 1 and str(path) in msg and "line 2" in msg and "candidates.0.price" in msg, msg
    path.write_text(json.dumps(docs[0]) + "\n" + json.dumps({**docs[0], "regoin": 1}) + "\n")
    res = CliRunner().invoke(app, ["rerank", "apply", "--run", str(rerank_run), "--lists", str(path)])
    assert isinstance(res.exception, DataError), res.output
    assert res.exception.column == "regoin" and "line 2" in str(res.exception) and str(path) in str(res.exception)
