"""Shared fixtures: a tiny synthetic market generated once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a tiny synthetic market (R/data/...). Treat it as read-only."""
    from mmrank.data.market import generate_market, market_config

    run = tmp_path_factory.mktemp("tiny_market")
    generate_market(market_config(size="tiny", seed=0, n_items=800, n_users=1000,
                                  n_impressions=30_000), run)
    return run


@pytest.fixture()
def tiny_run(tiny_market: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny market's run directory that a test may write into."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_market, run)
    return run


# ---- the serving run: built once per session, shared read-only ---------------------------------------------
def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def serving_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small complete run (market, small encoder, table + index, CTR models id, simtier and
    simtier+make) that every serving test reads; built once per session. Read-only: a test that
    writes (ingests, retrains, moves the table) takes ``serving_run_copy``. The session fails at its
    end if a file of it changed."""
    from mmrank.testing.serving import build_serving_run

    run = build_serving_run(tmp_path_factory.mktemp("serving") / "run",
                            strategies=("id", "simtier", "simtier+make"))
    before = _tree_state(run)
    yield run
    after = _tree_state(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared serving run (use serving_run_copy): {changed[:10]}"


@pytest.fixture()
def serving_run_copy(serving_run: Path, tmp_path: Path) -> Path:
    """A private copy of ``serving_run`` that a test may write into."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(serving_run, run)
    return run


@pytest.fixture()
def redis_url(tmp_path: Path):
    """A private redis-server for one test (skips when redis-server is not installed); its URL."""
    from mmrank.testing.serving import redis_server

    try:
        proc, url = redis_server(tmp_path)
    except FileNotFoundError:
        pytest.skip("redis-server not installed (apt-get install redis-server): redis source untested")
    yield url
    proc.kill()
    proc.wait(timeout=10)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by Selenium (the page tests; skipped without chromium)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium / chromium-driver not installed (apt-get install chromium chromium-driver; "
                    ".ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1600"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# ---- tests marked gpu: they need CUDA and skip without it (benchmarks/gpu_check.py runs them) -----------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
