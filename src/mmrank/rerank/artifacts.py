"""A trained re-ranker on disk: ``R/rerank/<model>/`` written by :func:`save_model`, read by :func:`load_model`.

Layout (``R`` the run)::

    R/rerank/<model>/model.safetensors   weights (never the frozen representations)
    R/rerank/<model>/vocab.safetensors   the ID vocabularies the model was trained with
    R/rerank/<model>/config.json         ListModelConfig, RerankTrainConfig, sizes, representation source
    R/rerank/<model>/metrics.json        the metrics of :func:`mmrank.rerank.evaluate.evaluate_orders` (1 seed)
    R/rerank/<model>/lineage.json        the digests of the tables and representations it was trained on
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import load_file as load_torch, save_file as save_torch

from mmrank import lineage
from mmrank.errors import ConfigError, MMRankError
from mmrank.rerank.data import ListSpace
from mmrank.rerank.models import ListModel, ListModelConfig
from mmrank.rerank.trainer import RerankData, RerankTrainConfig, build_model, load_data


def save_model(model: ListModel, data: RerankData, out: Path, train_cfg: RerankTrainConfig,
               extra: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_torch({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},   # from any device
               str(out / "model.safetensors"))
    save_np(data.space.to_arrays(), str(out / "vocab.safetensors"))
    conf = {"model": model.cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
            "representations": data.feats.source if data.feats is not None else None, **(extra or {})}
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    lineage.stamp(out, {**data.inputs, **({"representations": conf["representations"]}
                                          if conf["representations"] else {})})


def trained_config(run: Path, name: str, what: str = "trained model") -> tuple[Path, dict]:
    """``R/rerank/<name>`` and its ``config.json``, checked: trained (else :class:`MMRankError` naming
    ``what`` and the command to train it), and on the run's data now (:func:`mmrank.lineage.check`)."""
    d = Path(run) / "rerank" / name
    if not (d / "model.safetensors").exists():
        raise MMRankError(f"{d}: no {what} (run `mmrank rerank train --run {run} --model {name}`)")
    lineage.check(d, lineage.data_inputs(run, *lineage.RERANK_TABLES),
                  f"mmrank rerank train --run {run} --model {name}")
    return d, json.loads((d / "config.json").read_text())


def load_model(run: Path, name: str, data: RerankData | None = None,
               device: torch.device | None = None) -> tuple[ListModel, RerankData]:
    """Load ``R/rerank/<name>`` with the run's current representations re-attached, on ``device``
    (default the CPU); :class:`mmrank.lineage.StaleArtifact` when it was trained on other data than the
    run's now."""
    d, conf = trained_config(run, name)
    cfg = ListModelConfig.model_validate(conf["model"])
    data = data or load_data(run, with_features=cfg.backbone == "armmt")
    if data.feats is not None and conf.get("representations") not in (None, data.feats.source):
        raise ConfigError(f"{d}: trained on {conf['representations']}, the run now has {data.feats.source}")
    data.space = ListSpace.from_arrays(load_np(str(d / "vocab.safetensors")))
    model = build_model(data, cfg)
    model.load_state_dict(load_torch(str(d / "model.safetensors")), strict=True)
    if device is not None:
        model.to(device)
    return model.eval(), data
