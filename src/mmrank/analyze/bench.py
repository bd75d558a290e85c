"""What both analyses measure on one run, loaded once: encoders trained or reused on the cached
backbone features (their Acc@N), and the downstream GAUC of a CTR strategy on a given set of item
representations.

* :meth:`Bench.train_encoder`: one pre-training variant (with epochs, width, queue size or a share of
  the training pairs changed) on ``R/features/``'s cached backbone outputs -> item vectors and Acc@N;
* :meth:`Bench.reuse_encoder`: an encoder the run already has (``R/pretrain/<variant>/``);
* :meth:`Bench.downstream`: GAUC / AUC / LogLoss of ``simtier+make`` (or ``id``) on the test split,
  with the representations swapped in (:func:`mmrank.ctr.rundata.set_vectors`).

Training code only: nothing here reads ``R/truth/``; Acc@N is computed on the run's test pairs and
GAUC on the CTR test split, as the pretrain and ctr stages do.

On a device (``hardware``: auto | cpu | cuda | cuda:N): the encoders and CTR models are trained there
(the CTR stage's ``hardware``, pre-training's ``device``), item vectors are computed on
the model's device and come back to the host.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrank.analyze.config import AnalyzeConfig
from mmrank.device import HardwareConfig, resolve_device
from mmrank.errors import ConfigError, MMRankError
from mmrank.pretrain.config import MOON_ROWS, VARIANTS, PretrainConfig
from mmrank.device import model_device

MODS = {"e": "epochs", "d": "dim", "k": "queue_size", "f": "fraction"}


def parse_point(spec: str) -> tuple[str, dict[str, Any]]:
    """``"scl@e1@d16"`` -> ``("scl", {"epochs": 1, "dim": 16})``; ConfigError naming the bad part."""
    variant, *mods = spec.split("@")
    if variant not in VARIANTS:
        raise ConfigError(f"--points {spec!r}: unknown variant {variant!r}; expected one of "
                          f"{', '.join(VARIANTS)}")
    out: dict[str, Any] = {}
    for m in mods:
        key = MODS.get(m[:1])
        try:
            value = float(m[1:]) if key == "fraction" else int(m[1:])
        except ValueError:
            key = None
        if key is None or value <= 0 or (key == "fraction" and value > 1):
            raise ConfigError(f"--points {spec!r}: bad modifier {m!r}; expected eN (epochs), dN (width), "
                              f"kN (queue size) or fX (share of the training pairs, 0 < X <= 1)")
        out[key] = value
    return variant, out


class Bench:
    """One run's pre-training inputs (catalog, pairs, cached features) and CTR samples, in memory."""

    def __init__(self, run: Path, cfg: AnalyzeConfig, with_ctr: bool = True,
                 settings_from: Path | None = None, hardware: HardwareConfig | None = None) -> None:
        """``settings_from``: take the pre-training and CTR settings from that run's config.yaml
        instead of ``run``'s (a larger market measured with the main run's settings). ``hardware``:
        where the models train (None: auto; a device this machine lacks fails here, at once)."""
        from mmrank.encoders import native_input_size
        from mmrank.lineage import digest_inputs, encoder_inputs
        from mmrank.pretrain.data import build_features, native_image_size, read_catalog, read_pairs
        from mmrank.pretrain.evaluate import item_modality
        from mmrank.pretrain.train import modality_inputs
        from mmrank.run_config import load_run_config

        self.hardware = hardware or HardwareConfig()
        self.device = resolve_device(self.hardware.device)
        self.run = Path(run)
        self.cfg = cfg
        rc = load_run_config(run=Path(settings_from) if settings_from is not None else self.run)
        base = rc.pretrain.model_copy(update={"trainable_blocks": 0, "resume": False})
        if cfg.pretrain_epochs is not None:
            base = base.model_copy(update={"epochs": cfg.pretrain_epochs})
        self.pretrain = base
        self.ctr = rc.ctr
        self.inputs = encoder_inputs(self.run)
        self.data_digest = digest_inputs(self.inputs)
        self.catalog = read_catalog(self.run)
        self.pairs = read_pairs(self.run, self.catalog, base.seed)
        size = base.image_size or native_input_size(base.image_encoder)
        if not size:
            size, _ = native_image_size(self.catalog)
        self.image_size = int(size)
        self.feats = build_features(self.run, self.catalog, self.pairs, base.image_encoder,
                                    base.text_encoder, self.image_size, 0, device=self.device)
        self.modality = modality_inputs(self.catalog, self.pairs, len(self.catalog.item_ids))
        self.item_codes = item_modality(self.run, self.catalog.item_ids)
        self.make_epochs = self.ctr.make_epochs if cfg.make_epochs is None else cfg.make_epochs
        self.max_train_rows = cfg.max_train_rows if cfg.max_train_rows is not None else self.ctr.max_train_rows
        self.data = None
        if with_ctr:
            from mmrank.ctr.rundata import load_run

            ids = self.catalog.item_ids
            self.data = load_run(self.run, vectors=(ids, np.zeros((len(ids), 1), np.float32), "none"))
            self.data.limit_train(self.max_train_rows)

    # ---- encoders -------------------------------------------------------------------------------
    def n_train_pairs(self) -> int:
        return int((~self.pairs.test).sum())

    def variant_config(self, variant: str, mods: dict[str, Any]) -> PretrainConfig:
        """The run's pre-training config for ``variant`` with ``mods`` applied (epochs, dim, K)."""
        upd: dict[str, Any] = {"variant": variant}
        if variant in MOON_ROWS:
            upd.update({k: True for k in MOON_ROWS[variant]})
        for k in ("epochs", "dim", "queue_size"):
            if k in mods:
                upd[k] = int(mods[k])
        if "dim" in mods:
            upd["nested_dims"] = [d for d in self.pretrain.nested_dims if d < mods["dim"]] + [int(mods["dim"])]
        cfg = self.pretrain.model_copy(update=upd)
        return PretrainConfig.model_validate(cfg.model_dump())

    def pair_subset(self, fraction: float, seed: int = 0):
        """The pairs with all but ``fraction`` of the training rows set aside (marked test for the
        trainer only; evaluation keeps the run's test pairs). Nested: a smaller share's rows are a
        subset of a larger share's (one seeded permutation)."""
        import dataclasses

        train = np.flatnonzero(~self.pairs.test)
        keep = np.random.default_rng([seed, 2113]).permutation(train)[:max(2, int(round(fraction * len(train))))]
        drop = np.ones(len(self.pairs.test), bool)
        drop[keep] = False
        return dataclasses.replace(self.pairs, test=self.pairs.test | drop), int(len(keep))

    def train_encoder(self, variant: str, mods: dict[str, Any]) -> dict[str, Any]:
        """Train ``variant`` with ``mods`` on the cached features; returns ``{"metrics", "vectors"
        (by catalog row), "config", "n_train_pairs", "seconds"}``."""
        from mmrank.pretrain.distributed import DistEnv
        from mmrank.pretrain.evaluate import evaluate
        from mmrank.pretrain.model import OffTheShelf
        from mmrank.pretrain.train import train

        cfg = self.variant_config(variant, mods)
        if cfg.switches()["coaug"]:
            raise ConfigError(f"--points {variant}: co-augmented rows are reused, not trained here; "
                              f"train them with `mmrank pretrain compare --variants {variant}`")
        t0 = time.time()
        pairs, n_pairs = (self.pairs, self.n_train_pairs()) if "fraction" not in mods else \
            self.pair_subset(float(mods["fraction"]))
        if variant == "off-the-shelf":
            model: torch.nn.Module = OffTheShelf(int(np.prod(self.feats.item_img.shape[1:])),
                                                 int(self.feats.item_txt.shape[1]))
        else:
            model = train(cfg, self.feats, pairs, self.catalog.item_ids, DistEnv(), ckpt_dir=None,
                          log=lambda m: None, data_digest=self.data_digest, modality=self.modality,
                          device=self.device, bf16=self.hardware.bf16)
        metrics = evaluate(model, self.feats, self.pairs,
                           [] if isinstance(model, OffTheShelf) else cfg.nested_dims,
                           item_codes=self.item_codes)
        return {"metrics": metrics, "vectors": self.item_vectors(model), "config": cfg.model_dump(mode="json"),
                "n_train_pairs": n_pairs, "seconds": round(time.time() - t0, 2)}

    @torch.inference_mode()
    def item_vectors(self, model: torch.nn.Module) -> np.ndarray:
        """``(N, D)`` item vectors by catalog row from the cached backbone outputs (what
        ``ItemEncoder.encode_item_features`` computes)."""
        from mmrank.device import to_device

        was = model.training
        model.eval()
        dev = model_device(model)
        out = [model.item(to_device(self.feats.item_img[a:a + 1024], dev),
                          to_device(self.feats.item_txt[a:a + 1024], dev)).float().cpu()
               for a in range(0, len(self.catalog.item_ids), 1024)]
        model.train(was)
        return np.ascontiguousarray(torch.cat(out).numpy(), np.float32)

    def reuse_encoder(self, subdir: str) -> dict[str, Any]:
        """An encoder of the run (``R/<subdir>``): its stored Acc@N and its item vectors (over the
        cached features when they are this encoder's backbones, else its own backbones)."""
        import json

        from mmrank.pretrain.item_encoder import load_item_encoder

        t0 = time.time()
        enc = load_item_encoder(self.run, subdir, device=self.device, bf16=self.hardware.bf16)
        c = enc.config
        mpath = self.run / subdir / "metrics.json"
        if not mpath.exists():
            raise MMRankError(f"{mpath}: missing; the encoder has no Acc@N (retrain it with `mmrank pretrain`)")
        metrics = json.loads(mpath.read_text())
        same = (c["image_encoder"], c["text_encoder"], c["image_size"], c["trainable_blocks"]) == \
            (self.pretrain.image_encoder, self.pretrain.text_encoder, self.image_size, 0)
        if same:
            vecs = enc.encode_item_features(self.feats.item_img.numpy().astype(np.float32),
                                            self.feats.item_txt.numpy().astype(np.float32))
        else:
            from mmrank.data.io import read_items

            t = read_items(self.run / "data" / "items.parquet", ["item_id", "title"])
            if not np.array_equal(t.column("item_id").to_numpy().astype(np.int64), self.catalog.item_ids):
                raise MMRankError(f"{self.run}/data/items.parquet: item rows differ from the catalog read")
            vecs = enc.encode_items(t.column("title").to_pylist(), t.column("image").to_pylist())
        return {"metrics": metrics, "vectors": np.asarray(vecs, np.float32),
                "config": c.get("pretrain_config"), "version": enc.version,
                "seconds": round(time.time() - t0, 2)}

    # ---- downstream ------------------------------------------------------------------------------
    def downstream(self, strategy: str, seed: int, vectors: np.ndarray | None = None,
                   source: str = "", history_len: int | None = None) -> dict[str, Any]:
        """Train ``strategy`` (seed ``seed``) with ``vectors`` (by catalog row) as the items'
        representations, evaluate on the CTR test split: ``{"gauc", "auc", "logloss", "seconds"}``."""
        from mmrank.ctr.evaluate import evaluate
        from mmrank.ctr.models import CtrConfig
        from mmrank.ctr.rundata import fit_strategy, set_vectors
        from mmrank.ctr.trainer import predict

        if self.data is None:
            raise MMRankError("Bench opened without the CTR samples")
        if vectors is not None:
            from mmrank.vectors import l2_normalise

            set_vectors(self.data, self.catalog.item_ids, l2_normalise(vectors), source)
        elif strategy != "id":
            raise MMRankError(f"strategy {strategy!r} needs item vectors")
        mcfg = self.ctr.model
        if history_len is not None:
            mcfg = CtrConfig.model_validate({**mcfg.model_dump(), "history_len": int(history_len)})
        t0 = time.time()
        model, _ = fit_strategy(self.data, strategy, seed=seed, make_epochs=self.make_epochs, cfg=mcfg,
                                train_cfg=self.ctr.train, progress=True, hardware=self.hardware)
        m = evaluate(self.data, predict(model, self.data.enc, bf16=self.hardware.bf16,
                                         pin_memory=self.hardware.pin_memory))
        return {"gauc": float(m["gauc"]), "auc": float(m["auc"]), "logloss": float(m["logloss"]),
                "seconds": round(time.time() - t0, 1)}
