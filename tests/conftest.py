"""Shared fixtures: a tiny synthetic market generated once per test session."""

from __future__ import annotations

import os
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
