"""The market's settings, resolved: a size preset, then a YAML file, then explicit overrides.

The settings themselves are :class:`mmrank.config.MarketConfig` (with its
:class:`~mmrank.config.BehaviourConfig`, the behaviour model's parameters) and the size presets
:data:`mmrank.config.SIZES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrank.config import SIZES, MarketConfig, build, load_yaml
from mmrank.errors import DataError


def market_config(size: str = "default", config: str | Path | None = None, **overrides: Any) -> MarketConfig:
    """Resolve a :class:`MarketConfig`: size preset, then YAML file, then explicit overrides."""
    if size not in SIZES:
        raise DataError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}", column="size")
    data: dict[str, Any] = dict(SIZES[size])
    if config is not None:
        data.update(load_yaml(MarketConfig, config).model_dump(exclude_unset=True))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build(MarketConfig, data, "market config")
