"""Markets for tests: a micro synthetic market in seconds, and the real catalog when it is present."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FASHION = ROOT.parent / "shared" / "data" / "fashion-catalog" / "items.parquet"

needs_shared_data = pytest.mark.skipif(not FASHION.exists(), reason=f"real catalog not found at {FASHION}")


def micro_market(run: Path, seed: int = 0) -> Path:
    """A 300-item, 400-user, 12k-impression synthetic market in ``run/data``; returns ``run``."""
    from mmrank.data.market import generate_market, market_config

    generate_market(market_config(size="tiny", n_items=300, n_users=400, n_impressions=12_000,
                                  seed=seed), run)
    return run
