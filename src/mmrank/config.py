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


class MarketConfig(StrictModel):
    """The synthetic market (`mmrank market generate`)."""

    n_items: int = Field(20_000, ge=10)
    n_users: int = Field(50_000, ge=10)
    n_impressions: int = Field(2_000_000, ge=100)
    n_regions: int = Field(3, ge=1, le=16)
    n_days: int = Field(30, ge=2)
    list_size: int = Field(10, ge=2, le=50)
    initial_item_share: float = Field(0.7, gt=0.0, le=1.0, description="items that exist on day 0")
    image_query_share: float = Field(0.3, ge=0.0, le=1.0)
    zipf_exponent: float = Field(1.1, gt=0.0)
    quality_std: float = Field(0.8, ge=0.0, description="item quality only behaviour reveals")
    drift: float = Field(0.6, ge=0.0, description="how far user interest drifts over the simulation")
    image_size: int = Field(64, ge=16, le=256)
    seed: int = 0
    catalog: str | None = Field(None, description="a real catalog (Parquet); behaviour is simulated on it")


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
