"""Creatives in the market and the explained creative selector (issue 22, parts 4-5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mmrank.creative.config import ATTRIBUTES, CreativeConfig
from mmrank.creative.evaluate import CreativeTruth
from mmrank.creative.market import generate_creatives
from mmrank.creative.selector import Creatives, explain, user_context
from mmrank.creative.stage import compare, load_log, prepare, train_selector
from mmrank.errors import DataError
from mmrank.testing.audit import opens_under
from mmrank.testing.markets import micro_market

CFG = CreativeConfig(max_impressions=5000, epochs=2)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro market without creatives (read-only)."""
    return micro_market(tmp_path_factory.mktemp("creative_market"))


@pytest.fixture(scope="module")
def run(market: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro market with creatives and a creative log (read-only)."""
    out = tmp_path_factory.mktemp("creative_run") / "run"
    shutil.copytree(market, out)
    generate_creatives(CFG, out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_propensities_sum_to_one_and_the_log_is_consistent(run: Path) -> None:
    log = load_log(run)                      # raises if a row's propensities do not sum to 1
    props = np.stack(log["propensities"].to_numpy())
    assert props.shape == (len(log), CFG.per_item) and len(log) == 5000
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    np.testing.assert_allclose(props[:, 0], 1 - CFG.exploration)
    np.testing.assert_allclose(log["propensity"], props[np.arange(len(log)), log["shown_k"]])
    cr = Creatives.load(run)
    rows = cr.rows(log["item_id"].to_numpy())
    assert (cr.creative_ids[rows, log["shown_k"]] == log["creative_id"]).all()
    # the default is shown about 1 - E of the time (binomial: 5000 draws, 0.9 +- 4 sd)
    assert abs((log["shown_k"] == 0).mean() - 0.9) < 4 * np.sqrt(0.09 / len(log))
    # default creatives have the default look; the others differ from it in at least one attribute
    assert (cr.attrs[:, 0] == 0).all() and (cr.attrs[:, 1:].sum(-1) > 0).all()
    # nothing hidden in R/data; the default's true effect is exactly 1
    hidden = {"appeal_region", "appeal_taste"}
    assert not hidden & set(pq.read_schema(run / "data" / "creatives.parquet").names)
    eff = CreativeTruth(run).effects(log["user_id"].to_numpy()[:50], log["region"].to_numpy()[:50],
                                     cr.creative_ids[rows[:50]])
    np.testing.assert_allclose(eff[:, 0], 1.0)
    assert (eff[:, 1:] != 1.0).any()


def test_generate_is_deterministic_per_seed(market: Path, tmp_path: Path) -> None:
    a, b, c = (_copy(market, tmp_path / n) for n in "abc")
    small = CFG.model_copy(update={"max_impressions": 800})
    for r, seed in ((a, 0), (b, 0), (c, 1)):
        generate_creatives(small.model_copy(update={"seed": seed}), r)
    for f in ("data/creatives.parquet", "data/creative_log.parquet", "truth/creatives.parquet",
              "truth/creative_users.parquet"):
        assert pq.read_table(a / f).equals(pq.read_table(b / f)), f
    log = "data/creative_log.parquet"
    assert not pq.read_table(a / log).equals(pq.read_table(c / log))


def test_the_selector_trains_without_opening_the_truth(run: Path, tmp_path: Path) -> None:
    with opens_under(run / "truth") as opened:
        sel = train_selector(CFG, run, seed=0)
    assert opened == []
    # and with R/truth/ gone it trains to the same weights
    bare = _copy(run, tmp_path / "bare")
    shutil.rmtree(bare / "truth")
    again = train_selector(CFG, bare, seed=0)
    np.testing.assert_allclose(again.W, sel.W)
    assert sel.W.shape == (3, len(ATTRIBUTES))


def test_user_context_is_point_in_time() -> None:
    attr = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]], np.int8)   # creative id -> attributes
    log = pd.DataFrame({"user_id": [7, 7, 7, 7, 8], "ts": [1, 2, 2, 3, 3], "creative_id": [1, 2, 0, 0, 1],
                        "click": [1, 1, 0, 0, 1]})
    alt, n = user_context(log, attr, history=5)
    assert n.tolist() == [0, 1, 1, 2, 0]                 # a click at ts=2 is not context at ts=2
    assert alt[3].tolist() == [2, 1, 0, 0] and alt[1].tolist() == [1, 0, 0, 0]
    alt1, n1 = user_context(log, attr, history=1)
    assert n1[3] == 1 and alt1[3].tolist() == [1, 1, 0, 0]   # only the last click


def test_the_explanation_names_an_attribute_that_differs() -> None:
    default = {"background": "light", "crop": "loose", "text_band": "none", "border": "none"}
    choice = {**default, "background": "dark", "border": "border"}
    clicks = [{**default, "background": "dark"}] * 3 + [default] * 2
    text = explain(choice, default, {"clicks": clicks})
    assert text == "dark background: 3 of your last 5 clicks were on dark photos"
    # the model's gain picks among the differing attributes when the clicks do not favour one
    text = explain(choice, default, {"clicks": [], "region": 2}, {"background": -0.1, "border": 0.4})
    assert text.startswith("border:") and "region 2" in text
    assert explain(default, default, {"clicks": clicks}).startswith("default creative kept")
    with pytest.raises(DataError, match="background"):
        explain({**default, "background": "neon"}, default, {"clicks": []})


def test_compare_oracle_bounds_every_policy_and_is_deterministic(run: Path, tmp_path: Path) -> None:
    r = _copy(run, tmp_path / "r")
    out = compare(CFG, r, seeds=2)
    pol = out["policies"]
    for name in ("default", "logged", "random", "selector", "selector (no user context)"):
        assert pol["oracle"]["ctr"] >= pol[name]["ctr"] - 1e-12, name
        assert pol["oracle"]["purchases"] >= pol[name]["purchases"] - 1e-12, name
    assert len(out["selector_per_seed"]) == 2 and out["test_impressions"] > 0
    share = out["selector_share_of_oracle_gain"]
    assert share == pytest.approx((pol["selector"]["ctr"] - pol["default"]["ctr"])
                                  / (pol["oracle"]["ctr"] - pol["default"]["ctr"]))
    # each example's reason names an attribute whose word differs between the chosen and the default
    cr = Creatives.load(r)
    for e in out["examples"]:
        a, b = cr.attr_by_creative[e["chosen"]], cr.attr_by_creative[e["default"]]
        differ = [n for j, n in enumerate(ATTRIBUTES) if a[j] != b[j]]
        assert any(e["reason"].startswith(lab) for n in differ for lab in
                   {"background": ["dark background"], "crop": ["tight crop"], "text_band": ["text band"],
                    "border": ["border"]}[n]), e
    saved = json.loads((r / "creative" / "compare.json").read_text())
    assert saved["policies"] == pol and "| oracle |" in (r / "creative" / "compare.md").read_text()
    assert compare(CFG, r, seeds=2)["policies"] == pol


def test_cli_generate_and_compare_errors_name_the_file(market: Path, tmp_path: Path) -> None:
    from mmrank.cli import app

    r = _copy(market, tmp_path / "r")
    res = CliRunner().invoke(app, ["creative", "compare", "--run", str(r)])
    assert isinstance(res.exception, DataError) and "creative_log.parquet" in str(res.exception)
    res = CliRunner().invoke(app, ["creative", "generate", "--run", str(r), "--per-item", "2",
                                   "--max-impressions", "500"])
    assert res.exit_code == 0, res.output
    assert "exploration 0.1" in res.output and "assumed" in res.output
    assert len(load_log(r)) == 500 and Creatives.load(r).attrs.shape[1] == 2
    assert prepare(CFG, r).n_regions == 3


def _client(run: Path):
    from mmrank.serve.routes import creative
    from mmrank.testing.serving import route_client

    return route_client(run, creative.router)


def test_v1_creative_returns_the_choice_and_its_reason(run: Path, tmp_path: Path) -> None:
    from mmrank.creative.selector import Selector
    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    r = _copy(run, tmp_path / "r")
    assert "/v1/creative" in create_app(Settings(run=r)).openapi()["paths"]
    client = _client(r)
    cr = Creatives.load(r)
    res = client.post("/v1/creative", json={"item_id": int(cr.item_ids[0])})
    assert res.status_code == 409 and "selector" in res.json()["error"]
    # a hand-set selector: every non-default word costs 5, except a dark background for users whose
    # recent clicks were on dark photos
    Selector(0.0, np.array([0.0, -5, -5, -5]), np.zeros((3, 4)), np.array([5.0, 0, 0, 0])).save(
        r / "creative" / "selector.json")
    only_dark = np.flatnonzero((cr.attrs == [1, 0, 0, 0]).all(-1).any(-1))[0]
    dark = [int(c) for c in np.flatnonzero(cr.attr_by_creative[:, 0] == 1)[:3]]
    body = {"item_id": int(cr.item_ids[only_dark]), "region": 1, "recent_clicks": dark}
    out = client.post("/v1/creative", json=body).json()
    assert out["attributes"]["background"] == "dark" and out["k"] > 0
    assert out["creative_id"] == int(cr.creative_ids[only_dark, out["k"]])
    assert out["reason"] == "dark background: 3 of your last 3 clicks were on dark photos"
    out = client.post("/v1/creative", json={**body, "recent_clicks": []}).json()
    assert out["k"] == 0 and out["reason"].startswith("default creative kept")
    for item in (-1, 10 ** 30):
        res = client.post("/v1/creative", json={"item_id": item})
        assert res.status_code == 422 and res.json()["field"] == "item_id"
    res = client.post("/v1/creative", json={**body, "region": 9})
    assert res.status_code == 422 and res.json()["field"] == "region"
    res = client.post("/v1/creative", json={**body, "recent_clicks": [10 ** 9]})
    assert res.status_code == 422 and res.json()["field"] == "recent_clicks"
