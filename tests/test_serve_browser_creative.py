"""An item's creatives on the page at / (issue 22, acceptance line 3): the creative routes the page reads
(fast, in-process) and the page itself in a real browser (Selenium driving Debian's chromium, headless):
every creative's image decodes, exactly one is marked chosen, and the reason shown is the one
``POST /v1/creative`` gives for the same request."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrank.creative.config import CreativeConfig
from mmrank.creative.market import generate_creatives
from mmrank.creative.selector import Creatives
from mmrank.creative.serving import CreativeCatalog
from mmrank.creative.stage import load_log, train_selector
from mmrank.testing.markets import micro_market
from mmrank.testing.serving import ServerProcess

CFG = CreativeConfig(max_impressions=3000, epochs=2)


def _add_creatives(run: Path) -> Path:
    """Creatives, their log and a seed-0 selector in ``R/creative/selector.json`` (as compare saves it)."""
    generate_creatives(CFG, run)
    train_selector(CFG, run, seed=0).save(run / "creative" / "selector.json")
    return run


# ---- the routes, in process --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro market with creatives and a selector (read-only)."""
    return _add_creatives(micro_market(tmp_path_factory.mktemp("crpage") / "run"))


def _client(run: Path):
    from mmrank.serve.routes import creative
    from mmrank.testing.serving import route_client

    return route_client(run, creative.router)


def test_item_creatives_and_their_images(micro_run: Path) -> None:
    from PIL import Image

    client = _client(micro_run)
    cr = Creatives.load(micro_run)
    status = client.get("/v1/creatives").json()
    assert status == {"creatives": True, "selector": True, "items": 300, "per_item": 3, "note": None}
    item = int(cr.item_ids[7])
    out = client.get(f"/v1/items/{item}/creatives").json()
    assert [c["creative_id"] for c in out["creatives"]] == cr.creative_ids[7].tolist()
    assert [c["k"] for c in out["creatives"]] == [0, 1, 2] and out["creatives"][0]["is_default"]
    assert out["creatives"][0]["attributes"] == {"background": "light", "crop": "loose", "text_band": "none",
                                                 "border": "none"}
    for c in out["creatives"]:
        res = client.get(f"/v1/creatives/{c['creative_id']}/image")
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(res.content)).size == (CFG.size, CFG.size)
    for url in ("/v1/items/1/creatives", "/v1/creatives/900/image", "/v1/creatives/-1/image",
                f"/v1/creatives/{10 ** 30}/image", f"/v1/items/{10 ** 30}/creatives"):
        res = client.get(url)
        assert res.status_code == 404, url
        assert res.json()["field"] in {"item_id", "creative_id"} and "no" in res.json()["error"], url


def test_v1_creative_for_a_logged_user_reads_their_region_and_last_clicks(micro_run: Path) -> None:
    client = _client(micro_run)
    log = load_log(micro_run).sort_values(["ts", "impression_id"], kind="stable")
    clicks = log[log["click"] == 1]
    user = int(clicks["user_id"].value_counts().index[0])         # the user with the most clicks
    mine = log[log["user_id"] == user]
    want_clicks = [int(c) for c in mine.loc[mine["click"] == 1, "creative_id"].to_numpy()[-5:]]
    want_region = int(mine["region"].iloc[-1])
    assert CreativeCatalog.load(micro_run).user(user) == (want_region, want_clicks)
    item = int(Creatives.load(micro_run).item_ids[3])
    by_user = client.post("/v1/creative", json={"item_id": item, "user_id": user}).json()
    by_hand = client.post("/v1/creative", json={"item_id": item, "region": want_region,
                                                 "recent_clicks": want_clicks}).json()
    assert by_user["region"] == want_region and by_user["recent_clicks"] == want_clicks
    assert by_user["user_id"] == user and by_hand["user_id"] is None
    assert {k: v for k, v in by_user.items() if k != "user_id"} == {k: v for k, v in by_hand.items()
                                                                     if k != "user_id"}
    res = client.post("/v1/creative", json={"item_id": item, "user_id": user, "region": 1})
    assert res.status_code == 422 and res.json()["field"] == "user_id" and "region" in res.json()["error"]
    res = client.post("/v1/creative", json={"item_id": item, "user_id": 10 ** 12})
    assert res.status_code == 422 and res.json()["field"] == "user_id"
    res = client.post("/v1/creative", json={"item_id": item, "usr_id": user})
    assert res.status_code == 422 and res.json()["field"] == "usr_id"


def test_a_run_without_creatives_or_selector_is_a_409_and_a_status(tmp_path: Path) -> None:
    run = micro_market(tmp_path / "run")
    client = _client(run)
    status = client.get("/v1/creatives").json()
    assert status["creatives"] is False and "mmrank creative generate" in status["note"]
    for url in ("/v1/items/1/creatives", "/v1/creatives/0/image"):
        res = client.get(url)
        assert res.status_code == 409 and "no creatives" in res.json()["error"], url
    generate_creatives(CFG.model_copy(update={"max_impressions": 500}), run)
    status = client.get("/v1/creatives").json()  # the catalog is read again once the files appear
    assert status["creatives"] and not status["selector"] and "mmrank creative compare" in status["note"]
    item = int(Creatives.load(run).item_ids[0])
    assert client.get(f"/v1/items/{item}/creatives").status_code == 200
    assert client.post("/v1/creative", json={"item_id": item}).status_code == 409


# ---- the page, in a browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def creative_serving_run(serving_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared serving run with creatives and a selector (read-only)."""
    run = tmp_path_factory.mktemp("crpage_serving") / "run"
    shutil.copytree(serving_run, run)
    return _add_creatives(run)


def _creatives_shown(driver) -> list[dict]:
    """The panel's creatives: id, whether marked chosen, whether the image decoded (naturalWidth > 0)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#creatives li.creative')).map(li => {"
        " const i = li.querySelector('img');"
        " return {id: li.dataset.creativeId, chosen: li.classList.contains('chosen'),"
        "         tagged: li.querySelector('.chosen-tag') !== null,"
        "         decoded: i.complete && i.naturalWidth > 0}; });")


def _all_decoded(driver, item: int) -> bool:
    shown = _creatives_shown(driver)
    panel = driver.find_element("id", "creatives")
    return (panel.get_attribute("data-item-id") == str(item) and panel.get_attribute("data-state") == "shown"
            and bool(shown) and all(c["decoded"] for c in shown))


@pytest.mark.slow
@pytest.mark.browser
def test_page_shows_an_items_creatives_the_chosen_one_and_its_reason(browser, creative_serving_run: Path) -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run = creative_serving_run
    cr = Creatives.load(run)
    title = pq.read_table(run / "data" / "items.parquet", columns=["title"]).column("title")[4].as_py()
    wait = WebDriverWait(browser, 60)
    with ServerProcess(run) as srv:
        browser.get(srv.url + "/")
        wait.until(lambda d: "creatives each" in d.find_element(By.ID, "creative-note").text)
        users = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "user")).options][1:]
        # a user of the picker and an item for which the selector picks a non-default creative, if any
        catalog = CreativeCatalog.load(run)
        user = next((u for u in users if catalog.user(int(u))[1]), users[0])
        choices = {int(i): httpx.post(srv.url + "/v1/creative", json={"item_id": int(i), "user_id": int(user)})
                   .json() for i in cr.item_ids[:40]}
        item = next((i for i, c in choices.items() if c["k"] > 0), int(cr.item_ids[0]))
        want = choices[item]

        Select(browser.find_element(By.ID, "user")).select_by_value(user)
        browser.find_element(By.ID, "creative-item").send_keys(str(item))
        browser.find_element(By.ID, "creative-show").click()
        wait.until(lambda d: _all_decoded(d, item))
        shown = _creatives_shown(browser)
        assert [int(c["id"]) for c in shown] == cr.creative_ids[int(np.searchsorted(cr.item_ids, item))].tolist()
        assert all(c["decoded"] for c in shown)                   # every creative's PNG decoded
        chosen = [c for c in shown if c["chosen"]]
        assert len(chosen) == 1 and chosen[0]["tagged"] and sum(c["tagged"] for c in shown) == 1
        assert int(chosen[0]["id"]) == want["creative_id"]
        reason = browser.find_element(By.ID, "creative-reason").text
        assert reason and reason == want["reason"]                 # the page shows /v1/creative's reason
        assert f"region {want['region']}" in browser.find_element(By.ID, "creative-note").text

        # a result card clicked shows that item's creatives (anonymous user: region 0, no clicks)
        Select(browser.find_element(By.ID, "user")).select_by_index(0)
        browser.find_element(By.ID, "text-query").send_keys(title)
        browser.find_element(By.ID, "text-search").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ranked li.card"))
        first = browser.find_element(By.CSS_SELECTOR, "#ranked li.card")
        clicked = int(first.get_attribute("data-item-id"))
        first.click()
        wait.until(lambda d: _all_decoded(d, clicked))
        anon = httpx.post(srv.url + "/v1/creative", json={"item_id": clicked}).json()
        assert sum(c["chosen"] for c in _creatives_shown(browser)) == 1
        assert browser.find_element(By.ID, "creative-reason").text == anon["reason"]


@pytest.mark.slow
@pytest.mark.browser
def test_page_says_when_the_run_has_no_creatives(browser, serving_run: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with ServerProcess(serving_run) as srv:
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "No creatives to show" in d.find_element(By.ID, "creative-note").text)
        note = browser.find_element(By.ID, "creative-note")
        assert "mmrank creative generate" in note.text and "error" not in note.get_attribute("class")
        assert not browser.find_element(By.ID, "creative-show").is_enabled()
        assert browser.find_element(By.ID, "status").text == ""    # no error on the page
        assert not browser.find_elements(By.CSS_SELECTOR, "#creatives li")


@pytest.mark.slow
@pytest.mark.browser
def test_page_fetches_the_creatives_with_the_read_key(browser, creative_serving_run: Path, tmp_path: Path) -> None:
    """A server with a read key: the key is asked for once, and the creatives' images (an <img> cannot
    send the key) are fetched with it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    key_file = tmp_path / "read.key"
    key_file.write_text("crpage-read-key\n")
    item = int(Creatives.load(creative_serving_run).item_ids[5])
    wait = WebDriverWait(browser, 60)
    with ServerProcess(creative_serving_run, extra_args=("--read-key-file", str(key_file))) as srv:
        browser.get(srv.url + "/")  # a new origin (port): nothing stored for it yet
        alert = wait.until(EC.alert_is_present())
        alert.send_keys("crpage-read-key")
        alert.accept()
        wait.until(lambda d: "creatives each" in d.find_element(By.ID, "creative-note").text)
        browser.find_element(By.ID, "creative-item").send_keys(str(item))
        browser.find_element(By.ID, "creative-show").click()
        wait.until(lambda d: _all_decoded(d, item))
        assert len(_creatives_shown(browser)) == 3 and sum(c["chosen"] for c in _creatives_shown(browser)) == 1
        assert browser.find_element(By.ID, "creative-reason").text
