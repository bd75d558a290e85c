"""Config plumbing every stage builds on: :class:`StrictModel`, YAML loading with errors that name the
key, and recording what a stage ran with. Each stage's own config lives in its package
(``mmrank.<stage>.config``); the run config that gathers them is :mod:`mmrank.run_config`.

Example::

    >>> from mmrank.data.config import MarketConfig
    >>> build(MarketConfig, {"n_items": 1000}).n_items
    1000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mmrank.durable import write_text
from mmrank.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """A config model that rejects unknown keys and never coerces silently between types."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; :class:`ConfigError` if it is missing, bad YAML or not a
    mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def load_yaml(model: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load a YAML file into ``model``; ``overrides`` (e.g. CLI flags that were given) win."""
    data = read_mapping(path)
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
    write_text(path, yaml.safe_dump(payload, sort_keys=False))


def record(run: str | Path, section: str, cfg: StrictModel) -> None:
    """Write the settings a stage ran with into ``run/config.yaml`` (its section only)."""
    save_yaml(cfg, Path(run) / "config.yaml", section=section)
