"""The stage functions behind `mmrank pretrain`: one variant, the Table 2 comparison, the demo step."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrank.config import record
from mmrank.device import HardwareConfig, describe, model_device, resolve_device
from mmrank.durable import fsync_dir, temp_path, write_text
from mmrank.errors import ConfigError
from mmrank.lineage import digest_inputs, matches
from mmrank.pretrain.item_encoder import CONFIG, METRICS, save_encoder
from mmrank.pretrain.config import REFERENCES, SWITCH_ROWS, TABLE2, VARIANTS, PretrainConfig
from mmrank.pretrain.data import build_features, native_image_size, read_catalog, read_pairs
from mmrank.pretrain.distributed import DistEnv
from mmrank.pretrain.evaluate import evaluate, item_modality, mean_by_item_modality, popularity
from mmrank.pretrain.model import OffTheShelf
from mmrank.pretrain.train import modality_inputs, train

OFF_THE_SHELF = {"image_encoder": "efficientnet-lite0", "text_encoder": "minilm"}


def _say(env: DistEnv, msg: str) -> None:
    if env.main:
        print(msg, flush=True)


class _Prepared:
    """Catalog, pairs and cached features for one (image encoder, text encoder, size) triple."""

    def __init__(self, run: Path, cfg: PretrainConfig, env: DistEnv,
                 device: torch.device | None = None) -> None:
        from mmrank.lineage import encoder_inputs

        self.device = device  # where the frozen backbones encode the photos and titles (None: CPU)
        self.inputs = encoder_inputs(run)  # the digests of the tables read next (lineage.json)
        self.catalog = read_catalog(run)
        self.pairs = read_pairs(run, self.catalog, cfg.seed)
        from mmrank.encoders import native_input_size

        self.image_size = cfg.image_size or native_input_size(cfg.image_encoder)
        if not self.image_size:
            self.image_size, how = native_image_size(self.catalog)
            _say(env, f"image size {how}")
        self.image_tail = None
        self.text_tail = None
        self.end_to_end = cfg.end_to_end()
        if env.main:  # rank 0 encodes and caches; the others then read the cache
            self.feats = self._features(run, cfg)
        env.barrier()
        if not env.main:
            self.feats = self._features(run, cfg)
        self.modality = modality_inputs(self.catalog, self.pairs, len(self.catalog.item_ids))
        self._aug: dict[tuple[int, int], Any] = {}
        self._clicks: dict[tuple[int, int | None], Any] = {}
        if cfg.trainable_blocks and not self.end_to_end:
            from mmrank import encoders

            enc, _ = encoders.create_tower(cfg.image_encoder, "image", image_size=self.image_size,
                                           trainable_blocks=cfg.trainable_blocks)
            self.image_encoder = enc
            self.image_tail = enc.tail

    def _features(self, run: Path, cfg: PretrainConfig):
        if self.end_to_end:  # scl-finetune: pixels and tokens, and the encoders whose tails train
            from mmrank.pretrain.finetune import prepare_inputs

            got = prepare_inputs(run, self.catalog, self.pairs, cfg, self.image_size)
            self.image_encoder, self.image_tail = got.image_encoder, got.image_encoder.tail
            self.text_tail = None if got.text_encoder is None else got.text_encoder.tail
            return got.feats
        return build_features(run, self.catalog, self.pairs, cfg.image_encoder, cfg.text_encoder,
                              self.image_size, cfg.trainable_blocks, device=self.device)

    def augmented(self, run: Path, cfg: PretrainConfig, env: DistEnv):
        """The co-augmented item features of ``cfg`` (built once per (views, titles), cached on disk
        by rank 0 first); None when ``coaug`` is off."""
        if not cfg.switches()["coaug"]:
            return None
        key = (cfg.coaug_views, cfg.coaug_titles)
        if key not in self._aug:
            from mmrank.pretrain.augment import VIEWS, build_augmented

            def build():
                return build_augmented(run, self.catalog, self.feats, cfg.image_encoder,
                                       cfg.text_encoder, self.image_size, cfg.trainable_blocks,
                                       cfg.coaug_views, cfg.coaug_titles)
            if env.main:
                self._aug[key] = build()
                _say(env, f"co-augmentation: {cfg.coaug_views} photo views (original, "
                          f"{', '.join(VIEWS[v] for v in range(1, cfg.coaug_views)) or 'no others'}), "
                          f"{cfg.coaug_titles} titles per item (original + attribute templates)")
            env.barrier()
            if not env.main:
                self._aug[key] = build()
        return self._aug[key]


    def click_visual(self, run: Path, cfg: PretrainConfig, env: DistEnv):
        """The click pairs (clicks before the pre-training split, :mod:`mmrank.pretrain.clicks`) and
        photo views of ``cfg`` as the trainer reads them, built once per (views, max gap); None
        when ``click_visual`` is off. Returns ``(ClickVisualInputs, ClickPairs)``."""
        if not cfg.switches()["click_visual"]:
            return None
        key = (cfg.click_visual_views, cfg.click_visual_max_gap_s)
        if key not in self._clicks:
            from mmrank.pretrain.augment import VIEWS, build_augmented
            from mmrank.pretrain.clicks import ClickVisualInputs, run_click_pairs, to_rows

            pairs = run_click_pairs(run, cfg.click_visual_max_gap_s)
            has_img = self.modality.item_img.numpy()
            first, second = to_rows(pairs, self.catalog.item_ids, has_img)

            def build():
                return build_augmented(run, self.catalog, self.feats, cfg.image_encoder, cfg.text_encoder,
                                       self.image_size, cfg.trainable_blocks, cfg.click_visual_views, 1)
            if env.main:
                aug = build()
            env.barrier()
            if not env.main:
                aug = build()
            self._clicks[key] = (ClickVisualInputs(first, second, aug.images, np.flatnonzero(has_img)),
                                 pairs)
            _say(env, f"click-visual: {len(pairs)} click pairs (a click, the same user's next click) "
                      f"before the pre-training split ts {pairs.cutoff}, {len(first)} with both photos; "
                      f"{cfg.click_visual_views} photo views per item (original, "
                      f"{', '.join(VIEWS[v] for v in range(1, cfg.click_visual_views))})")
        return self._clicks[key]

    def inputs_of(self, run: Path, cfg: PretrainConfig) -> dict[str, str]:
        """What an encoder of ``cfg`` is made from: the encoder's tables, and with ``click_visual``
        the events and the digest of the click pairs read from them."""
        if not cfg.switches()["click_visual"]:
            return self.inputs
        from mmrank.lineage import data_inputs
        from mmrank.pretrain.clicks import run_click_pairs

        key = (cfg.click_visual_views, cfg.click_visual_max_gap_s)
        pairs = (self._clicks[key][1] if key in self._clicks
                 else run_click_pairs(run, cfg.click_visual_max_gap_s))
        return {**self.inputs, **data_inputs(run, "events"), "click_pairs": pairs.digest()}


def _encoder_config(cfg: PretrainConfig, prep: _Prepared, model: torch.nn.Module) -> dict[str, Any]:
    from mmrank.pretrain.finetune import encoder_config

    off = isinstance(model, OffTheShelf)
    d_image = model.d_image if off else int(model.g_img.proj.in_features)
    d_text = model.d_text if off else int(model.g_txt.proj.in_features)
    return {
        "kind": "off-the-shelf" if off else "scl-towers",
        "variant": cfg.variant, "image_encoder": cfg.image_encoder, "text_encoder": cfg.text_encoder,
        "image_size": prep.image_size, "trainable_blocks": cfg.trainable_blocks,
        "dim": int(model.dim), "hidden": cfg.hidden, "d_image": d_image,
        "moe": bool(getattr(model, "moe", None) is not None),
        "d_text": d_text,
        "nested_dims": [] if off else list(cfg.nested_dims),
        "pretrain_config": cfg.model_dump(mode="json"),
        **encoder_config(cfg),
    }


def run_variant(run: Path, cfg: PretrainConfig, out: Path, prep: _Prepared | None = None,
                env: DistEnv | None = None, hardware: HardwareConfig | None = None) -> dict[str, Any]:
    """Train (unless off-the-shelf) and evaluate one variant; rank 0 writes ``out`` (an encoder dir).

    ``hardware``: where to train and evaluate (None: ``HardwareConfig()``, auto); the encoder is
    saved from a host copy. Returns the metrics (``acc@1``/``acc@5`` per modality, nested dims,
    timings, version, ``device``: where it was evaluated).
    """
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)
    env = env or DistEnv.from_env(dev)
    run = Path(run)
    if cfg.variant == "off-the-shelf" and cfg.trainable_blocks:
        raise ConfigError("off-the-shelf uses frozen backbones: trainable_blocks must be 0")
    prep = prep or _Prepared(run, cfg, env, dev)
    t0 = time.time()
    report: dict[str, Any] = {}
    if cfg.variant == "off-the-shelf":
        model: torch.nn.Module = OffTheShelf(int(np.prod(prep.feats.item_img.shape[1:])),
                                             int(prep.feats.item_txt.shape[1]))
    else:
        # each variant fine-tunes its own copy of the pristine backbone tail(s)
        tail = copy.deepcopy(prep.image_tail) if prep.image_tail is not None else None
        text_tail = copy.deepcopy(prep.text_tail) if prep.text_tail is not None else None
        if cfg.end_to_end():
            from mmrank.pretrain.finetune import configure_tails

            configure_tails(cfg, tail, text_tail)
        cv = prep.click_visual(run, cfg, env)
        model = train(cfg, prep.feats, prep.pairs, prep.catalog.item_ids, env,
                      ckpt_dir=run / "pretrain" / "ckpt" / cfg.variant, image_tail=tail,
                      log=lambda m: _say(env, m), data_digest=digest_inputs(prep.inputs_of(run, cfg)),
                      modality=prep.modality, aug=prep.augmented(run, cfg, env), report=report,
                      clicks=None if cv is None else cv[0], text_tail=text_tail, device=dev,
                      bf16=hw.bf16)
    train_s = time.time() - t0
    metrics: dict[str, Any] = {}
    if env.main:
        metrics = evaluate(model, prep.feats, prep.pairs,
                           [] if isinstance(model, OffTheShelf) else cfg.nested_dims,
                           item_codes=item_modality(run, prep.catalog.item_ids))
        metrics.update(variant=cfg.variant, train_seconds=round(train_s, 2),
                       image_size=prep.image_size, world_size=env.world,
                       device=describe(model_device(model)))
        model = model.cpu()  # the encoder is written from host copies
        if report.get("epochs"):
            metrics["epochs"] = report["epochs"]
        own: dict[str, torch.Tensor] = {}
        if prep.image_tail is not None:
            own = prep.image_encoder.own_state()
        elif cfg.image_encoder == "cnn-small":  # seeded random frozen weights: ship them anyway
            from mmrank.encoders.image import CnnSmall

            own = CnnSmall(prep.image_size, 0, seed=0).own_state()
        extra = {f"image_backbone.{k}": v for k, v in own.items()}
        version = save_encoder(out, model, _encoder_config(cfg, prep, model), metrics, extra,
                               inputs=prep.inputs_of(run, cfg))
        metrics["version"] = version
        if "dropped" in report:  # the filter's dropped pairs, for evaluation code to score
            write_text(out / "dropped.json", json.dumps(_dropped(prep, cfg, report["dropped"]),
                                                        indent=1))
        _say(env, f"{cfg.variant}: acc@1 image={_fmt(metrics['acc@1']['image'])} "
                  f"text={_fmt(metrics['acc@1']['text'])}  acc@5 image="
                  f"{_fmt(metrics['acc@5']['image'])} text={_fmt(metrics['acc@5']['text'])} -> {out}")
    env.barrier()
    return metrics


def _dropped(prep: _Prepared, cfg: PretrainConfig, dropped: dict[int, list[int]]) -> dict[str, Any]:
    """``dropped.json``: per epoch, the dropped pairs' rows of ``R/data/pairs.parquet`` and their
    request ids."""
    rid = prep.pairs.request_id
    return {"filter_share": cfg.filter_share, "filter_warmup_epochs": cfg.filter_warmup_epochs,
            "n_train_pairs": int((~prep.pairs.test).sum()),
            "note": "pair_rows index R/data/pairs.parquet; chosen from the model's query-item "
                    "similarity only (R/truth is never read)",
            "epochs": [{"epoch": e, "pair_rows": rows,
                        "request_ids": [] if rid is None else [int(rid[r]) for r in rows]}
                       for e, rows in sorted(dropped.items())]}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def pretrain(run: str | Path, cfg: PretrainConfig | None = None,
             hardware: HardwareConfig | None = None) -> dict[str, Any]:
    """`mmrank pretrain --run R`: one variant -> ``R/encoder/`` (+ ``metrics.json``, with the
    ``device`` it ran on). ``hardware`` None: ``HardwareConfig()`` (auto)."""
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)  # first: a device this machine lacks fails before any work
    run = Path(run)
    cfg = cfg or PretrainConfig()
    env = DistEnv.from_env(dev)
    metrics = run_variant(run, cfg, run / "encoder", env=env, hardware=hw)
    if env.main:
        record(run, "pretrain", cfg.model_copy(update={"image_size": metrics["image_size"]}))
    return metrics


def compare(run: str | Path, cfg: PretrainConfig | None = None,
            variants: tuple[str, ...] = REFERENCES + TABLE2, seeds: int = 1,
            hardware: HardwareConfig | None = None) -> dict[str, Any]:
    """`mmrank pretrain compare --run R`: Table 2 on R's market.

    Every variant's encoder goes to ``R/pretrain/<variant>/``; ``R/pretrain/compare.json`` maps each
    variant (and nothing else) to ``{"acc@1": {"image", "text"}, "acc@5": {...}}``;
    ``compare_detail.json`` adds nested dims, timings and the config; ``compare.md`` is the table.
    ``metrics.json`` holds each trained row's per-epoch training log (per seed). The MOON2.0 rows
    (``moe``, ``align``, ``coaug``, ``filter``, ``moon2``: SCL with those switches) and
    ``click-visual`` (SCL with the ``click_visual`` switch, issue 22) run when named in ``variants``. The SCL encoder is also installed as ``R/encoder/`` (the one later stages use). ``off-the-shelf``
    is always EfficientNet-Lite0 + MiniLM with no training; ``popularity`` ranks every query's
    candidates by training purchases (a reference row, no encoder).

    With ``seeds`` > 1 each trained variant is trained with seeds ``cfg.seed .. cfg.seed + seeds - 1``
    (the first in ``R/pretrain/<variant>/``, the others in ``R/pretrain/<variant>.seed<S>/``);
    ``compare.json`` holds the means, and each result its ``std`` and ``per_seed`` values. The two
    references train nothing and are measured once.

    ``hardware`` (None: ``HardwareConfig()``, auto): where the variants train; ``compare_detail.json``
    records the ``device``.
    """
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)  # first: a device this machine lacks fails before any work
    run = Path(run)
    base = cfg or PretrainConfig()
    env = DistEnv.from_env(dev)
    results: dict[str, Any] = {}
    prepared: dict[tuple, _Prepared] = {}
    for v in variants:  # every row checked before anything trains
        if v not in VARIANTS + REFERENCES:
            raise ConfigError(f"unknown variant {v!r}; expected one of "
                              f"{', '.join(VARIANTS + REFERENCES)}")
    for v in variants:
        if v == "popularity":  # a reference that trains nothing: S ranked by training purchases
            if env.main:
                catalog = read_catalog(run)
                results[v] = popularity(read_pairs(run, catalog, base.seed))
                results[v]["variant"] = v
            continue
        upd: dict[str, Any] = {"variant": v}
        if v == "off-the-shelf":
            upd.update(OFF_THE_SHELF, trainable_blocks=0)
        elif v in SWITCH_ROWS:  # SCL with the row's MOON2.0 (or click-visual) switches on
            upd.update({k: True for k in SWITCH_ROWS[v]})
        c = base.model_copy(update=upd)
        key = (c.image_encoder, c.text_encoder, c.image_size, c.trainable_blocks,
               ("end-to-end", c.finetune_text_layers) if c.end_to_end() else None)
        if key not in prepared:
            prepared[key] = _Prepared(run, c, env, dev)
        n = 1 if v == "off-the-shelf" else seeds
        per_seed = []
        for i in range(n):
            ci = c.model_copy(update={"seed": c.seed + i})
            out = run / "pretrain" / (v if i == 0 else f"{v}.seed{c.seed + i}")
            done = finished(out, ci, prepared[key].inputs_of(run, ci))
            if done is not None:
                _say(env, f"{v} seed {ci.seed}: finished before with this config and data, kept ({out})")
            per_seed.append(done if done is not None
                            else run_variant(run, ci, out, prepared[key], env, hardware=hw))
        results[v] = per_seed[0] if n == 1 else _over_seeds(per_seed)
    if env.main:
        table = {v: {"acc@1": r["acc@1"], "acc@5": r["acc@5"]} for v, r in results.items()}
        shown = {v: {**table[v], **({"std": r["std"]} if "std" in r else {})}
                 for v, r in results.items()}
        detail = {"variants": results, "config": base.model_dump(mode="json"), "device": describe(dev),
                  "note": "Acc@N of Eq. 6: D = the test pairs of one query modality, S = the set "
                          "of their positives; behaviour is simulated"}
        out = run / "pretrain"
        out.mkdir(parents=True, exist_ok=True)
        logs = {v: ([r.get("epochs", [])] if "per_seed_epochs" not in r else r["per_seed_epochs"])
                for v, r in results.items() if r.get("epochs") or r.get("per_seed_epochs")}
        training = {"note": "per variant, per seed: one record per epoch (losses by name; MoE rows: "
                            "the router's mean gate per expert, by tower; filter rows: the dropped "
                            "share of the training pairs)", "variants": logs}
        for name, payload in (("compare.json", table), ("compare_detail.json", detail),
                              ("metrics.json", training)):
            write_text(out / name, json.dumps(payload, indent=1))
        write_text(out / "compare.md", markdown_table(shown))
        if "scl" in results:
            dst, tmpd = run / "encoder", temp_path(run / "encoder")
            shutil.copytree(run / "pretrain" / "scl", tmpd, dirs_exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmpd, dst)
            fsync_dir(run)
        record(run, "pretrain", base)
    return results


def finished(out: Path, cfg: PretrainConfig, inputs: dict[str, str]) -> dict[str, Any] | None:
    """The metrics of a variant seed already trained into ``out`` with exactly ``cfg`` on the same data
    (``inputs``), or None. ``compare`` keeps such a seed instead of training it again, so a killed
    comparison restarts from its finished seeds. A config recorded before a setting existed is read
    with that setting's default (new switches are off by default, so it trained as it would now)."""
    try:
        made = PretrainConfig.model_validate(json.loads((out / CONFIG).read_text())["pretrain_config"])
        metrics = json.loads((out / METRICS).read_text())
    except (OSError, ValueError, KeyError, TypeError):   # pydantic's ValidationError is a ValueError
        return None
    if made != cfg or not matches(out, inputs):
        return None
    return metrics


def _over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's results over seeds: the first seed's record with ``acc@N`` replaced by the mean,
    beside ``std`` (sample standard deviation) and ``per_seed``."""
    out = dict(per_seed[0])
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for acc in ("acc@1", "acc@5"):
        mean[acc], std[acc] = {}, {}
        for m in per_seed[0][acc]:
            xs = [r[acc][m] for r in per_seed if r[acc][m] is not None]
            mean[acc][m] = float(np.mean(xs)) if xs else None
            std[acc][m] = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    out["by_item_modality"] = mean_by_item_modality(per_seed)  # issue 20: mean over seeds
    out.update(mean, std=std, seeds=len(per_seed),
               per_seed=[{"acc@1": r["acc@1"], "acc@5": r["acc@5"]} for r in per_seed])
    if any("epochs" in r for r in per_seed):
        out["per_seed_epochs"] = [r.get("epochs", []) for r in per_seed]
    return out


def markdown_table(table: dict[str, Any]) -> str:
    """Table 2 as markdown: one row per variant, Acc@1/Acc@5 for image and text queries (mean ± std
    over seeds where a row has ``std``)."""
    lines = ["| variant | Acc@1 image | Acc@1 text | Acc@5 image | Acc@5 text |",
             "|---|---:|---:|---:|---:|"]
    for v, r in table.items():
        sd = r.get("std")

        def cell(acc: str, m: str) -> str:
            x = _fmt(r[acc][m])
            return x if not sd or sd[acc][m] is None else f"{x} ± {_fmt(sd[acc][m])}"

        lines.append(f"| {v} | {cell('acc@1', 'image')} | {cell('acc@1', 'text')} | "
                     f"{cell('acc@5', 'image')} | {cell('acc@5', 'text')} |")
    return "\n".join(lines) + "\n"


# Sized for the demo's budget (`make demo` within 4 minutes on 2 cores, issue 28).
DEMO = {
    "tiny": dict(epochs=3, batch_size=256, queue_size=4096, hidden=256, nested_dims=[64, 256],
                 lr=2e-3),
    "small": dict(epochs=3, batch_size=256, queue_size=4096, hidden=256, nested_dims=[64, 256],
                  lr=2e-3),
    "default": dict(epochs=6, batch_size=512, queue_size=16384, hidden=256, lr=2e-3),
}


def demo_stage(run: Path, size: str, hardware: HardwareConfig | None = None) -> dict[str, Any]:
    """The demo's pre-training step: Table 2 on the run's market (frozen cached features).

    Returns ``{"acc@1": {variant: {"image", "text"}}, "acc@5": {...}, "encoder_version",
    "markdown", "seconds", ...}``. The SCL encoder is installed as ``run/encoder/``.
    """
    if size not in DEMO:
        raise ConfigError(f"size: expected one of {', '.join(DEMO)}, got {size!r}")
    t0 = time.time()
    res = compare(run, PretrainConfig(**DEMO[size]), hardware=hardware)
    return {
        "acc@1": {v: r["acc@1"] for v, r in res.items()},
        "acc@5": {v: r["acc@5"] for v, r in res.items()},
        "encoder_version": res["scl"]["version"],
        "key_path": PretrainConfig(**DEMO[size]).key_path,
        "image_size": res["scl"]["image_size"],
        "encoders": "efficientnet-lite0 + minilm (frozen, cached features) + trained heads",
        "markdown": markdown_table({v: {"acc@1": r["acc@1"], "acc@5": r["acc@5"]}
                                    for v, r in res.items()}),
        "seconds": round(time.time() - t0, 1),
    }


def variant_vectors(run: str | Path, variant: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The items of ``R/data/items.parquet`` embedded by the encoder ``R/pretrain/<variant>`` (e.g. the
    ``click-visual`` row, for the CTR strategy of that name): ``(ids (N,), vectors (N, D) unit rows,
    "encoder:<version>")``, as :func:`mmrank.ctr.representations.item_vectors` gives the run's own.

    Embedded once into ``R/pretrain/<variant>/items/`` (a table in the format of ``R/embeddings``,
    with ``lineage.json``: the encoder version and the catalog's digest) and read from there while
    both are unchanged; re-embedded when either changed. The encoder is refused
    (:class:`mmrank.lineage.StaleArtifact`) when trained on other data than the run's now. Backbone
    outputs are reused from the pre-training cache when they are exactly the encoder's.
    """
    from mmrank import lineage
    from mmrank.data.io import read_items
    from mmrank.errors import MMRankError
    from mmrank.pretrain.item_encoder import load_item_encoder
    from mmrank.store.backends import create_table, open_table
    from mmrank.vectors import l2_normalise

    run = Path(run)
    d = run / "pretrain" / variant
    if not (d / "version.txt").exists():
        raise MMRankError(f"{d}: no {variant} encoder (run `mmrank pretrain compare --run {run} "
                          f"--variants scl,{variant}`)")
    enc = load_item_encoder(run, f"pretrain/{variant}")
    root = d / "items"
    inputs = {"encoder": enc.version, **lineage.data_inputs(run, "items")}
    if not ((root / "CURRENT").exists() and lineage.matches(root, inputs)):
        t0 = time.time()
        cached = enc.cached_item_features(run)
        if cached is not None:
            ids, img, txt = cached
            vecs = enc.encode_item_features(img, txt)
        else:
            t = read_items(run / "data" / "items.parquet", ["item_id", "title"])
            ids = t.column("item_id").to_numpy().astype(np.int64)
            vecs = enc.encode_items(t.column("title").to_pylist(), t.column("image").to_pylist())
        if root.exists():
            shutil.rmtree(root)
        table = create_table(root, version=enc.version, dim=enc.dim, encoder_name=enc.name)
        try:
            table.put(np.asarray(ids, np.int64), vecs, version=enc.version)
            table.publish()
        finally:
            table.close()
        lineage.stamp(root, inputs, digest=enc.version)
        print(f"[pretrain] embedded {len(ids)} items with {d} (encoder {enc.version}) into {root} "
              f"in {time.time() - t0:.1f}s", flush=True)
    table = open_table(root)
    try:
        ids = np.unique(np.asarray(table.ids(), np.int64))
        return ids, l2_normalise(table.get(ids, missing="zero")), f"encoder:{table.version}"
    finally:
        table.close()
