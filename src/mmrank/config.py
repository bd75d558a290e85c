"""Typed configs (pydantic) for every stage, loadable from YAML; an unknown or mistyped key is rejected.

Example::

    >>> from mmrank.config import MarketConfig
    >>> MarketConfig(n_items=1000).n_items
    1000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmrank.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """A config model that rejects unknown keys and never coerces silently between types."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BehaviourConfig(StrictModel):
    """How simulated users behave. Set from what real shops show, before any comparison was run.

    Rates the defaults aim at (the manifest records what a market reaches): display CTR 2-6% per
    impression (Alimama display ads ~5%, Ali-CCP ~4%), search CTR 5-15%, at most 30% of clicks carted
    and at most 50% of carts bought (Taobao UserBehavior: ~6% of item views carted, ~2% bought). Region
    values are listed largest region first; a list shorter than the number of regions repeats its last
    value.
    """

    region_shares: list[float] = Field([0.57, 0.30, 0.13], description="share of users per region")
    region_price_sensitivity: list[float] = Field([0.6, 1.0, 1.5])
    region_position_decay: list[float] = Field([0.55, 0.8, 1.1],
                                               description="examination = 1 / (1 + position) ** decay")
    region_photo_weight: list[float] = Field([1.0, 0.6, 1.4], description="weight on what photos show")
    region_title_weight: list[float] = Field([0.8, 1.3, 0.6], description="weight on what titles name")
    region_outside_option: list[float] = Field([0.3, 0.0, 0.6],
                                               description="utility of buying nothing among the carted")
    region_shown: list[int] = Field([20, 15, 10], description="search results shown per request")
    regional_assortment: float = Field(0.35, ge=0.0, le=1.0,
                                       description="share of items sold only in their home region")
    display_share: float = Field(0.45, ge=0.0, le=1.0, description="share of impressions on display")
    display_slots: int = Field(8, ge=2, le=50)
    search_candidates: int = Field(50, ge=5, le=200, description="retrieved per search request")
    burn_in_days: int = Field(30, ge=0, description="simulated before the logged samples begin")
    centres_max: int = Field(3, ge=1, le=8, description="interest centres per user (1..max)")
    taste_bandwidth: float = Field(1.6, gt=0.0)
    taste_weight: float = Field(1.0, ge=0.0)
    visible_appeal_std: float = Field(0.5, ge=0.0, description="appeal the content shows")
    hidden_appeal_std: float = Field(0.5, ge=0.0, description="appeal only behaviour reveals")
    revisit_weight: float = Field(0.8, ge=0.0, description="pull of near-duplicates of recent clicks")
    substitution: float = Field(0.8, ge=0.0, description="a look-alike shown above lowers the appeal")
    engagement_std: float = Field(0.5, ge=0.0, description="per-request mood no input carries")
    query_match_weight: float = Field(1.0, ge=0.0)
    display_intercept: float = Field(-4.2)
    search_intercept: float = Field(-4.0)
    cart_intercept: float = Field(-2.8)
    buy_intercept: float = Field(-2.0, description="search: utility of the carted items vs buying nothing")
    display_buy_intercept: float = Field(-1.2, description="display: a carted item is bought alone")


class MarketConfig(StrictModel):
    """The synthetic market (`mmrank market generate`)."""

    n_items: int = Field(20_000, ge=10)
    n_users: int = Field(50_000, ge=10)
    n_impressions: int = Field(2_000_000, ge=100, description="logged after the burn-in, both surfaces")
    n_regions: int = Field(3, ge=1, le=16)
    n_days: int = Field(30, ge=2)
    initial_item_share: float = Field(0.7, gt=0.0, le=1.0, description="items that exist on day 0")
    image_query_share: float = Field(0.3, ge=0.0, le=1.0)
    zipf_exponent: float = Field(0.8, gt=0.0, description="exposure ~ 1 / rank ** exponent")
    drift: float = Field(0.3, ge=0.0, description="how far interest centres drift over the simulation")
    image_size: int = Field(64, ge=16, le=256)
    seed: int = 0
    catalog: str | None = Field(None, description="a real catalog (Parquet); behaviour is simulated on it")
    behaviour: BehaviourConfig = Field(default_factory=BehaviourConfig)


SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_items=1_500, n_users=2_000, n_impressions=60_000),
    "small": dict(n_items=6_000, n_users=12_000, n_impressions=400_000),
    "default": dict(n_items=20_000, n_users=50_000, n_impressions=2_000_000),
}
SizeName = Literal["tiny", "small", "default"]


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{field}'"
    return f"{source}: key '{field}': {first['msg']} (got {first.get('input')!r})"


def build(model: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` naming the first bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_yaml(model: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load a YAML file into ``model``; ``overrides`` (e.g. CLI flags that were given) win."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(model, data, str(path))


def save_yaml(cfg: StrictModel, path: str | Path, section: str | None = None) -> None:
    """Write ``cfg`` to ``path`` (merged under ``section`` when given, so one file holds every stage)."""
    path = Path(path)
    payload = cfg.model_dump(mode="json")
    if section is not None:
        existing = yaml.safe_load(path.read_text()) if path.exists() else {}
        existing = existing or {}
        existing[section] = payload
        payload = existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
