"""The page at / in a real browser (Selenium driving Debian's chromium, headless): a text search and
an image search both show ranked product photos."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmrank.testing.serving import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _photos_loaded(driver, column: str) -> list[str]:
    """Item ids of the result column whose photo decoded in the browser (naturalWidth > 0)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(`#${arguments[0]} li.card`))"
        ".filter(li => { const i = li.querySelector('img.photo'); return i.complete && i.naturalWidth > 0; })"
        ".map(li => li.dataset.itemId);", column)


def test_page_text_and_image_search_show_ranked_photos(browser, serving_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run = serving_run
    items = pq.read_table(run / "data" / "items.parquet", columns=["item_id", "title", "image"])
    photo = tmp_path / "query.jpg"
    photo.write_bytes(items.column("image")[11].as_py())
    wait = WebDriverWait(browser, 60)
    with ServerProcess(run) as srv:
        browser.get(srv.url + "/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "user")).options) > 1)
        Select(browser.find_element(By.ID, "user")).select_by_index(1)

        browser.find_element(By.ID, "text-query").send_keys(items.column("title")[4].as_py())
        browser.find_element(By.ID, "text-search").click()
        wait.until(lambda d: len(_photos_loaded(d, "ranked")) >= 5)
        text_ids = [li.get_attribute("data-item-id") for li in browser.find_elements(By.CSS_SELECTOR, "#ranked li.card")]
        assert "for user" in browser.find_element(By.ID, "status").text
        assert browser.find_elements(By.CSS_SELECTOR, "#ranked .hist span")  # SimTier histograms drawn
        assert len(_photos_loaded(browser, "reranked")) >= 5  # the right column (CTR order, no re-ranker)
        assert "No re-ranker loaded" in browser.find_element(By.ID, "rerank-note").text

        browser.find_element(By.ID, "image-file").send_keys(str(photo))
        browser.find_element(By.ID, "image-search").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "candidates from photo query.jpg"))
        wait.until(lambda d: len(_photos_loaded(d, "ranked")) >= 5)
        image_ids = [li.get_attribute("data-item-id") for li in browser.find_elements(By.CSS_SELECTOR, "#ranked li.card")]
        assert image_ids and image_ids != text_ids
        scores = browser.find_elements(By.CSS_SELECTOR, "#ranked .why")
        assert scores and "CTR score" in scores[0].text


def test_page_asks_for_the_read_key_once_and_shows_photos(browser, serving_run: Path, tmp_path: Path) -> None:
    """A server started with a read key: the page asks for it, then searches and shows the photos
    (fetched with the key)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    key_file = tmp_path / "read.key"
    key_file.write_text("page-read-key-123\n")
    title = pq.read_table(serving_run / "data" / "items.parquet", columns=["title"]).column("title")[4].as_py()
    wait = WebDriverWait(browser, 60)
    with ServerProcess(serving_run, extra_args=("--read-key-file", str(key_file))) as srv:
        browser.get(srv.url + "/")  # a new origin (port): nothing stored for it yet
        alert = wait.until(EC.alert_is_present())  # the page's first read (/v1/bundle) got 401
        assert "read key" in alert.text
        alert.send_keys("page-read-key-123")
        alert.accept()
        wait.until(lambda d: "encoder" in d.find_element(By.ID, "bundle").text)
        browser.find_element(By.ID, "text-query").send_keys(title)
        browser.find_element(By.ID, "text-search").click()
        wait.until(lambda d: len(_photos_loaded(d, "ranked")) >= 5)
        assert browser.execute_script("return sessionStorage.getItem('mmrank-read-key')") == "page-read-key-123"
