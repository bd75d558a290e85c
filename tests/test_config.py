"""Typed configs reject unknown and mistyped keys, naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrank.config import load_yaml, save_yaml
from mmrank.data.config import MarketConfig
from mmrank.data.market import market_config
from mmrank.errors import ConfigError


def test_yaml_round_trip_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    save_yaml(MarketConfig(n_items=123, seed=4), path)
    cfg = load_yaml(MarketConfig, path, overrides={"seed": 9, "n_users": None})
    assert (cfg.n_items, cfg.seed, cfg.n_users) == (123, 9, MarketConfig().n_users)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("n_items: 10\nzipf_exponnt: 1.2\n")
    with pytest.raises(ConfigError, match=r"m.yaml: unknown key 'zipf_exponnt'"):
        load_yaml(MarketConfig, path)


def test_mistyped_and_out_of_range_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("n_items: many\n")
    with pytest.raises(ConfigError, match=r"key 'n_items'.*'many'"):
        load_yaml(MarketConfig, path)
    with pytest.raises(ConfigError, match=r"key 'image_query_share'"):
        market_config(size="tiny", image_query_share=1.5)
    with pytest.raises(Exception, match=r"unknown size 'huge'"):
        market_config(size="huge")


def test_sizes_resolve() -> None:
    assert market_config(size="tiny").n_items < market_config(size="small").n_items
    d = market_config(size="default")
    assert (d.n_items, d.n_users, d.n_impressions) == (20_000, 50_000, 2_000_000)
