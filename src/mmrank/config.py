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
    target_rates: dict[str, float] = Field(
        {"display_click": 0.045, "search_click": 0.12, "cart_per_click": 0.22,
         "display_purchase_per_cart": 0.45, "search_purchase_per_cart": 0.45},
        description="what calibration fits the five intercepts to (see MarketConfig.calibrate)")


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
    calibrate: bool | None = Field(None, description="fit the intercepts to behaviour.target_rates by "
                                   "pilot simulations on a tenth of the users before the real one. None: "
                                   "on for a real catalog (its content spreads differently), off for the "
                                   "synthetic one, whose hand-set intercepts land near the targets")
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
    data = _read_mapping(path)
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


# ---------------------------------------------------------------------------------------------------
# Sections of the run config that belong to no stage package (the data import and the embedding table).

class DataConfig(StrictModel):
    """`mmrank data import` / `mmrank data build`: how logs become the run's tables."""

    split_ts: int | None = Field(None, ge=0, description="train/test boundary (seconds); None: the "
                                 "(1 - test_share) quantile of the events' ts, or the preset's own split")
    test_share: float = Field(0.2, gt=0.0, lt=1.0, description="share of events (by time) that is test "
                              "when split_ts is None")
    history_len: int = Field(50, ge=1, description="at most L clicks per behaviour sequence")
    start_ts: int = Field(0, ge=0, description="events before this feed behaviour histories and sales only "
                          "(no samples, pairs or lists)")
    negatives_per_positive: int = Field(4, ge=1, le=100, description="logs without impressions: items "
                                        "sampled from the catalog (uniformly among items that exist at the "
                                        "time) shown beside each interaction, as negatives")
    pairs: Literal["auto", "queries", "item-to-item"] = Field(
        "auto", description="pre-training pairs: 'queries' = query -> purchased item (needs queries); "
                            "'item-to-item' = title of the item a user interacted with just before -> the "
                            "next one; 'auto' = queries when the log has them")
    check_images: bool = Field(True, description="decode every image at import (a bad one names its row)")
    session_gap: int = Field(0, ge=0, description="impression logs without request ids: impressions of "
                             "one user at most this many seconds apart are one request (0: the same time)")
    seed: int = Field(0, description="seed of sampled negatives and positions")


class EmbedConfig(StrictModel):
    """`mmrank embed`: the embedding table and its ANN index."""

    batch_size: int = Field(256, ge=1, description="items per encoder batch")
    ray_workers: int = Field(0, ge=0, description="encode on a local Ray instance with N workers")
    backend: Literal["local", "redis"] = "local"
    redis_url: str | None = Field(None, description="redis://host:port/db (backend redis)")
    namespace: str | None = Field(None, description="Redis key prefix")
    exact_below: int = Field(50_000, ge=0, description="exact (flat) ANN index below this many items, "
                             "HNSW above")
    threads: int | None = Field(None, ge=1, description="torch threads")
    reuse_features: bool = Field(True, description="take the backbone outputs pre-training cached for "
                                 "these items (when they are exactly the encoder's) instead of "
                                 "re-encoding the photos and titles")


# ---------------------------------------------------------------------------------------------------
# The run config: one section per stage.
#
# Sections are listed here, statically, as "module:Class". A section whose package is not part of
# this build (``rerank`` until mmrank.rerank lands) is left out of RunConfig; a file that sets it
# is then an error that says so. A stage package adds its section by adding one line here.

SECTIONS: dict[str, str] = {
    "market": "mmrank.config:MarketConfig",
    "data": "mmrank.config:DataConfig",
    "pretrain": "mmrank.pretrain.config:PretrainConfig",
    "embed": "mmrank.config:EmbedConfig",
    "ctr": "mmrank.ctr.settings:CtrStageConfig",
    "rerank": "mmrank.rerank.config:RerankConfig",
}
_RUN_MODEL: list[type[StrictModel]] = []


def section_model(name: str) -> type[StrictModel] | None:
    """The config class of section ``name``, or None when its package is not installed."""
    import importlib

    if name not in SECTIONS:
        raise ConfigError(f"unknown config section {name!r}; expected one of {', '.join(SECTIONS)}")
    mod, _, cls = SECTIONS[name].partition(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("mmrank"):
            return None
        raise
    except AttributeError:
        return None


def run_config_model() -> type[StrictModel]:
    """The ``RunConfig`` class: one field per available section, each defaulting to its defaults."""
    if not _RUN_MODEL:
        from pydantic import create_model

        fields: dict[str, Any] = {}
        for name in SECTIONS:
            model = section_model(name)
            if model is not None:
                fields[name] = (model, Field(default_factory=model, description=model.__doc__))
        _RUN_MODEL.append(create_model("RunConfig", __base__=StrictModel,
                                       __doc__="Every stage's settings, one section per stage.",
                                       **fields))
    return _RUN_MODEL[0]


def __getattr__(name: str) -> Any:  # `from mmrank.config import RunConfig` (built on first use)
    if name == "RunConfig":
        return run_config_model()
    raise AttributeError(f"module 'mmrank.config' has no attribute {name!r}")


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def file_section(path: str | Path | None, section: str) -> dict[str, Any]:
    """The keys a run-config file sets in ``section`` (only those; nothing filled in).

    A file whose top-level keys are section names is a run config; a file without any section name
    is taken as that one section alone (the older one-stage YAML files).
    """
    if path is None:
        return {}
    data = _read_mapping(Path(path))
    sections = [k for k in data if k in SECTIONS]
    if not sections:
        return data
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (sections: {', '.join(SECTIONS)})")
    if section_model(section) is None and section in data:
        raise ConfigError(f"{path}: section '{section}' is not available in this build")
    value = data.get(section) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: section '{section}': expected a mapping, got {type(value).__name__}")
    return value


def stage_config(section: str, path: str | Path | None = None,
                 flags: dict[str, Any] | None = None) -> Any:
    """A stage's effective settings: defaults, then the file's ``section``, then the flags given.

    ``flags`` may nest (``{"model": {"make": {"knowledge": "full"}}}``); None means "not given".
    """
    model = section_model(section)
    if model is None:
        raise ConfigError(f"config section {section!r}: its package is not part of this build")
    data = _deep_merge(file_section(path, section), flags or {})
    return build(model, data, f"{path}: section '{section}'" if path else f"{section} settings (flags)")


def load_run_config(path: str | Path | None = None, run: str | Path | None = None) -> Any:
    """The whole RunConfig: defaults, then what ``run/config.yaml`` recorded, then the file ``path``."""
    model = run_config_model()
    data: dict[str, Any] = {}
    sources = []
    if run is not None and (Path(run) / "config.yaml").exists():
        sources.append(Path(run) / "config.yaml")
    if path is not None:
        sources.append(Path(path))
    for src in sources:
        raw = _read_mapping(src)
        if not any(k in SECTIONS for k in raw):
            raise ConfigError(f"{src}: not a run config (no section among {', '.join(SECTIONS)})")
        for k in raw:
            if k not in SECTIONS:
                raise ConfigError(f"{src}: unknown key '{k}' (sections: {', '.join(SECTIONS)})")
            if k not in model.model_fields:
                raise ConfigError(f"{src}: section '{k}' is not available in this build")
        data = _deep_merge(data, {k: v for k, v in raw.items() if isinstance(v, dict)})
    return build(model, data, " + ".join(str(s) for s in sources) or "defaults")


def record(run: str | Path, section: str, cfg: StrictModel) -> None:
    """Write the settings a stage ran with into ``run/config.yaml`` (its section only)."""
    save_yaml(cfg, Path(run) / "config.yaml", section=section)


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=1_000).strip().removesuffix("...").strip()


def _commented(model: StrictModel, indent: int = 0) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        doc = info.description
        if not doc and isinstance(value, StrictModel) and type(value).__doc__:
            doc = type(value).__doc__.strip().splitlines()[0]
        if doc:
            lines.append(f"{pad}# {' '.join(doc.split())}")
        if isinstance(value, StrictModel):
            lines.append(f"{pad}{name}:")
            lines += _commented(value, indent + 2)
        else:
            lines.append(f"{pad}{name}: {_yaml_value(value)}")
    return lines


def render_run_config(cfg: StrictModel, comments: bool = True) -> str:
    """YAML of a RunConfig: every setting of every section (with each field's description as a comment)."""
    if not comments:
        return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    lines = ["# mmrank run config: one section per stage. Every stage takes --config FILE; flags given on",
             "# the command line override the file, and R/config.yaml records what each stage ran with."]
    missing = [n for n in SECTIONS if n not in type(cfg).model_fields]
    for name in type(cfg).model_fields:
        section = getattr(cfg, name)
        doc = (type(section).__doc__ or "").strip().splitlines()[0] if type(section).__doc__ else ""
        lines += ["", f"# {doc}" if doc else "#", f"{name}:"]
        lines += _commented(section, 2)
    for name in missing:
        lines += ["", f"# {name}: not available in this build ({SECTIONS[name].partition(':')[0]} is not "
                      "installed)"]
    return "\n".join(lines) + "\n"
