"""Serving a sid bundle (issue 25): a new item posted to /v1/items gets semantic IDs at once, from the
stored codebooks, and /v1/rank scores it with them, without a restart."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

torch.set_num_threads(1)
KEY = "test-key-0123456789"


def test_new_item_gets_codes_at_ingest_and_is_ranked_with_them_without_restart(serving_run_copy: Path) -> None:
    from fastapi.testclient import TestClient

    from mmrank.ctr.stage import train_strategy
    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings
    from mmrank.sid.stage import load_sid
    from mmrank.threads import limited

    run = serving_run_copy
    with limited(1):
        train_strategy(run, "sid", make_epochs=1, progress=False)      # builds the codes on demand
    version = (run / "encoder" / "version.txt").read_text().strip()
    sid = load_sid(run, version)
    t = pq.read_table(run / "data" / "items.parquet", columns=["item_id", "title", "image", "category"])
    cat = {c: t.column(c).to_pylist() for c in t.column_names}
    ids = np.asarray(cat["item_id"], np.int64)
    codes, found = sid.lookup(ids)
    assert found.all()
    # a source item, another whose level-1 code differs, and a history that avoids the source's code
    src = 0
    other = int(np.flatnonzero(codes[:, 0] != codes[src, 0])[0])
    hist = [int(i) for i in ids[codes[:, 0] != codes[src, 0]][:5]]

    app = create_app(Settings(run=run, api_key=KEY, strategy="sid", max_body_bytes=256 << 10, threads=1))
    with TestClient(app) as client:
        bundle_before = client.get("/v1/bundle").json()["bundle"]
        new = {}
        for new_id, k in ((888000001, src), (888000002, other)):
            r = client.post("/v1/items", headers={"X-API-Key": KEY},
                            json={"item_id": new_id, "title": cat["title"][k], "category": cat["category"][k],
                                  "image_b64": base64.b64encode(cat["image"][k]).decode()})
            assert r.status_code == 201, r.text
            new[new_id] = r.json()["sid_codes"]
        # same content as a catalog item -> the same codes (assign is the rule the catalog's follow)
        assert new[888000001] == codes[src].tolist()
        assert new[888000002] == codes[other].tolist()

        def scores() -> dict[int, float]:
            r = client.post("/v1/rank", json={"user": {"history": hist},
                                              "candidates": [888000001, 888000002]})
            assert r.status_code == 200, r.text
            assert r.json()["strategy"] == "sid" and r.json()["unknown"] == []
            return {i["item_id"]: i["logit"] for i in r.json()["items"]}

        before = scores()
        assert not any(i["id_known"] for i in client.post("/v1/rank", json={
            "user": {"history": hist}, "candidates": [888000001]}).json()["items"])
        # move the embedding of the new item's level-1 code: its score moves, the other item's does not
        model = app.state.mmrank.current().model
        with torch.no_grad():
            model.sid.tables[0].weight[codes[src, 0] + 1] += 0.5
        after = scores()
        assert abs(after[888000001] - before[888000001]) > 1e-4
        assert after[888000002] == before[888000002]
        assert client.get("/v1/bundle").json()["bundle"] == bundle_before    # no reload, no restart
