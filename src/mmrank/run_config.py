"""The run config: one section per stage, each the stage's own config class.

``mmrank config show / init`` print it; every stage command takes ``--config FILE`` and reads its
section (:func:`stage_config`); ``R/config.yaml`` records what each stage ran with.

Example::

    >>> RunConfig().pretrain.variant
    'scl'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from mmrank.config import StrictModel, build, read_mapping
from mmrank.ctr.config import CtrStageConfig
from mmrank.data.config import DataConfig, MarketConfig
from mmrank.device import HardwareConfig, resolve_device
from mmrank.errors import ConfigError
from mmrank.pretrain.config import PretrainConfig
from mmrank.rerank.config import RerankConfig
from mmrank.store.config import EmbedConfig


def _section(model: type[StrictModel]) -> Any:
    return Field(default_factory=model, description=model.__doc__)


class RunConfig(StrictModel):
    """Every stage's settings, one section per stage (in pipeline order)."""

    market: MarketConfig = _section(MarketConfig)
    data: DataConfig = _section(DataConfig)
    pretrain: PretrainConfig = _section(PretrainConfig)
    embed: EmbedConfig = _section(EmbedConfig)
    ctr: CtrStageConfig = _section(CtrStageConfig)
    rerank: RerankConfig = _section(RerankConfig)
    hardware: HardwareConfig = _section(HardwareConfig)


SECTIONS: tuple[str, ...] = tuple(RunConfig.model_fields)


def _check_section(name: str) -> type[StrictModel]:
    if name not in SECTIONS:
        raise ConfigError(f"unknown config section {name!r}; expected one of {', '.join(SECTIONS)}")
    return RunConfig.model_fields[name].annotation  # type: ignore[return-value]


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
    is taken as that one section alone (a one-stage YAML file).
    """
    _check_section(section)
    if path is None:
        return {}
    data = read_mapping(path)
    if not any(k in SECTIONS for k in data):
        return data
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (sections: {', '.join(SECTIONS)})")
    value = data.get(section) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: section '{section}': expected a mapping, got {type(value).__name__}")
    return value


def stage_config(section: str, path: str | Path | None = None,
                 flags: dict[str, Any] | None = None) -> Any:
    """A stage's effective settings: defaults, then the file's ``section``, then the flags given.

    ``flags`` may nest (``{"model": {"make": {"knowledge": "full"}}}``); None means "not given".
    """
    model = _check_section(section)
    data = _deep_merge(file_section(path, section), flags or {})
    return build(model, data, f"{path}: section '{section}'" if path else f"{section} settings (flags)")


def hardware_config(path: str | Path | None = None, device: str | None = None,
                    bf16: bool | None = None) -> HardwareConfig:
    """The ``hardware`` section (where every stage runs): defaults, the file's section, the flags; its
    device checked now, so ``--device cuda`` on a machine without CUDA stops before any work with one
    line (:class:`mmrank.device.DeviceError`)."""
    flags = {k: v for k, v in {"device": device, "bf16": bf16}.items() if v is not None}
    hw = stage_config("hardware", path, flags)
    resolve_device(hw.device)
    return hw


def load_run_config(path: str | Path | None = None, run: str | Path | None = None) -> RunConfig:
    """The whole RunConfig: defaults, then what ``run/config.yaml`` recorded, then the file ``path``."""
    data: dict[str, Any] = {}
    sources = []
    if run is not None and (Path(run) / "config.yaml").exists():
        sources.append(Path(run) / "config.yaml")
    if path is not None:
        sources.append(Path(path))
    for src in sources:
        raw = read_mapping(src)
        if not any(k in SECTIONS for k in raw):
            raise ConfigError(f"{src}: not a run config (no section among {', '.join(SECTIONS)})")
        for k in raw:
            if k not in SECTIONS:
                raise ConfigError(f"{src}: unknown key '{k}' (sections: {', '.join(SECTIONS)})")
        data = _deep_merge(data, {k: v for k, v in raw.items() if isinstance(v, dict)})
    return build(RunConfig, data, " + ".join(str(s) for s in sources) or "defaults")


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


def render_run_config(cfg: RunConfig, comments: bool = True) -> str:
    """YAML of a RunConfig: every setting of every section (with each field's description as a comment)."""
    if not comments:
        return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    lines = ["# mmrank run config: one section per stage. Every stage takes --config FILE; flags given on",
             "# the command line override the file, and R/config.yaml records what each stage ran with."]
    for name in SECTIONS:
        section = getattr(cfg, name)
        doc = (type(section).__doc__ or "").strip().splitlines()[0] if type(section).__doc__ else ""
        lines += ["", f"# {doc}" if doc else "#", f"{name}:"]
        lines += _commented(section, 2)
    return "\n".join(lines) + "\n"
