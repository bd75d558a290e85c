"""A trained strategy on disk: ``R/ctr/<strategy>/`` written by :func:`save_model`, read by :func:`load_model`.

Layout (``R`` the run)::

    R/ctr/<strategy>/model.safetensors   weights (MAKE's too; never the representations)
    R/ctr/<strategy>/vocab.safetensors   the ID vocabularies the model was trained with
    R/ctr/<strategy>/config.json         CtrConfig, TrainConfig, sizes, MAKE epochs, representation source
                                         (and ``sid``: the semantic IDs' version, for sid strategies)
    R/ctr/<strategy>/metrics.json        auc, gauc, logloss, groups (8, lowest frequency first), new_items
    R/ctr/<strategy>/lineage.json        the digests of the tables and representations it was trained on
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import load_file as load_torch, save_file as save_torch

from mmrank import lineage
from mmrank.ctr.data import FeatureSpace, Vocab
from mmrank.ctr.models import CtrConfig, CtrModel, ModelSizes
from mmrank.ctr.representations import (check_representation_version, code_table, item_vectors,
                                        representation_version, vector_table)
from mmrank.ctr.trainer import TrainConfig
from mmrank.errors import ConfigError, MMRankError


def save_model(model: CtrModel, space: FeatureSpace, out: Path, *, train_cfg: TrainConfig,
               extra: dict | None = None, inputs: dict | None = None) -> None:
    """Write weights, vocabularies and config (safetensors + JSON) to ``out``; ``inputs`` (what it was
    trained on, :mod:`mmrank.lineage`) to ``out/lineage.json``."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # from any device
    save_torch(state, str(out / "model.safetensors"))
    arrays = {k: v for k, v in space.to_arrays().items() if k != "vocab.vec_items"}
    save_np(arrays, str(out / "vocab.safetensors"))
    conf = {"model": model.cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
            "sizes": model.sizes.to_dict(), "make_frozen": model.freeze_make}
    conf.update(extra or {})
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    if inputs is not None:
        lineage.stamp(out, inputs)


def load_model(run: Path, strategy: str, *, attach_vectors: bool = True, encoder_version: str | None = None,
               device: torch.device | None = None) -> tuple[CtrModel, FeatureSpace, dict]:
    """Load ``R/ctr/<strategy>`` (in eval mode); :class:`mmrank.lineage.StaleArtifact` when it was
    trained on other data than the run's now.

    With ``attach_vectors`` the run's current representations are re-attached (``space.vec_items``
    covers them), after checking that they come from the encoder version the model was trained on.
    Without, the model gets an empty ``(2, D)`` table and ``space.vec_items`` is None: the caller
    passes the vectors of each batch to :func:`score` (serving), after checking ``encoder_version``
    (the version of the table it will read) the same way. ``device``: where the model is put (default
    the CPU).
    """
    d = Path(run) / "ctr" / strategy
    if not (d / "model.safetensors").exists():
        raise MMRankError(f"{d}: no trained model (run `mmrank ctr train --run {run} --strategy {strategy}`)")
    lineage.check(d, lineage.data_inputs(run, *lineage.CTR_TABLES),
                  f"mmrank ctr train --run {run} --strategy {strategy}")
    conf = json.loads((d / "config.json").read_text())
    cfg = CtrConfig.model_validate(conf["model"])
    sizes = ModelSizes(**conf["sizes"])
    space = FeatureSpace.from_arrays(load_np(str(d / "vocab.safetensors")))
    vecs = codes = None
    if cfg.uses_vectors and attach_vectors:
        if cfg.uses_posttrained:
            from mmrank.posttrain.stage import posttrained_vectors

            ids, v, source = posttrained_vectors(run)
        elif cfg.uses_click_visual:
            from mmrank.pretrain.stage import variant_vectors

            ids, v, source = variant_vectors(run, "click-visual")
        else:
            ids, v, source = item_vectors(run)
        check_representation_version(conf, d, representation_version(source))
        if v.shape[1] != sizes.vec_dim:
            raise ConfigError(f"{d}: trained on {sizes.vec_dim}-d representations, the run now has "
                              f"{v.shape[1]}-d ones")
        space.vec_items = Vocab.of(ids)
        vecs = vector_table(space, ids, v)
        if cfg.uses_sid:
            codes = code_table(space, ids, v, load_codes(run, d, conf, representation_version(source)))
    elif cfg.uses_vectors:
        check_representation_version(conf, d, encoder_version)
        vecs = torch.zeros(2, sizes.vec_dim)
        if cfg.uses_sid:
            codes = torch.zeros(2, sizes.sid_levels, dtype=torch.int64)
    model = CtrModel(cfg, sizes, vecs, freeze_make=bool(conf.get("make_frozen")), codes=codes)
    model.load_state_dict(load_torch(str(d / "model.safetensors")), strict=True)
    if device is not None:
        model.to(device)
    model.eval()
    return model, space, conf


def load_codes(run: Path, where: Path, conf: dict, version: str | None):  # noqa: ANN201 (SidCodes)
    """The run's semantic IDs for a sid model trained at ``where``: the codes of encoder ``version``,
    refused (:class:`ConfigError`) unless they are the ones it was trained with (``conf["sid"]``) and
    of its sizes."""
    from mmrank.sid.stage import load_sid

    sid = load_sid(run, str(version))
    if conf.get("sid") != sid.version:
        raise ConfigError(f"{where}: trained on semantic IDs {conf.get('sid')!r}, the run now has "
                          f"{sid.version!r} (rebuilt by `mmrank sid build`): retrain it")
    sizes = conf["sizes"]
    if (sizes.get("sid_levels"), sizes.get("sid_codes")) != (sid.levels, sid.n_codes):
        raise ConfigError(f"{where}: trained on {sizes.get('sid_levels')} x {sizes.get('sid_codes')} codes, "
                          f"the run's are {sid.levels} x {sid.n_codes}")
    return sid
