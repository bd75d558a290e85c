"""The SCL trainer (Sec. 3.3): InfoNCE over in-batch keys (gathered across ranks) + a MoCo queue,
triplet loss on hard negatives, nested dimensions. Runs unchanged under ``torchrun`` (gloo).

MOON2.0's switches (issue 20, :meth:`PretrainConfig.switches`): ``moe`` (the towers' modality mixture
of experts), ``align`` (the item-level image-title term), ``coaug`` (item keys from augmented views and
template titles, :mod:`mmrank.pretrain.augment`), ``filter`` (:mod:`mmrank.pretrain.filtering`). Each
epoch's record (losses by name, the router's load per expert, the dropped share) goes to the log and
to ``report["epochs"]``. The ``click_visual`` switch (issue 22) adds two image-tower terms,
``click_visual_loss`` (click pairs, :mod:`mmrank.pretrain.clicks`) and ``view_ssl_loss`` (two augmented
views of one photo), logged by name with the others.

Determinism: batch ``s`` of epoch ``e`` is fixed by ``(seed, e)``, the torch RNG is re-seeded from
``(seed, step)`` each step, so a run resumed from a checkpoint replays the same batches, and a
2-rank run sees the same global batches as a 1-rank run (each rank takes its slice).

Device (issue 30): ``train(..., device=, bf16=)`` puts the model, the objective, the momentum
encoder and the queue on ``device`` (None: the CPU); the cached feature tables go there whole when
they fit (on CUDA: half the free memory), else each batch's rows are gathered on the host and copied
(pinned, non-blocking). Batches are drawn on the host exactly as on the CPU (numpy and the CPU torch
generator), so a CUDA run sees the same batches. The towers' forward and the losses run under
:func:`mmrank.device.autocast` (bf16 on CUDA, nothing on the CPU), the losses' logits in fp32; the
weights and the optimiser stay fp32. The CPU path computes exactly what it did before.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmrank.device import autocast, synchronize, to_device
from mmrank.errors import ConfigError, MMRankError
from mmrank.pretrain.checkpoint import FILE, load_checkpoint, save_checkpoint
from mmrank.pretrain.config import FINETUNE_FIELDS, PretrainConfig
from mmrank.pretrain.augment import AugmentedFeatures
from mmrank.pretrain.clicks import ClickVisualInputs
from mmrank.pretrain.data import BOTH, IMAGE, TEXT, Catalog, Features, PairTable
from mmrank.pretrain.distributed import DistEnv
from mmrank.pretrain.filtering import PairFilter
from mmrank.pretrain.finetune import feature_dim, param_groups
from mmrank.pretrain.losses import (AlignmentLoss, ClickVisualLoss, InfoNCELoss, MomentumQueue,
                                    TripletLoss, momentum_update)
from mmrank.pretrain.model import SCLModel


@dataclass
class ModalityInputs:
    """Which inputs each item and query has: ``item_img``, ``item_txt`` (N,) bool; ``query`` (P,)
    int8 (``TEXT`` | ``IMAGE`` | ``BOTH``)."""

    item_img: torch.Tensor
    item_txt: torch.Tensor
    query: np.ndarray


def modality_inputs(catalog: Catalog | None, pairs: PairTable, n_items: int) -> ModalityInputs:
    """The one place the modality flags are read. Items: the ``has_image`` / ``has_title`` columns of
    the items file when present (bool; an absent column means every item has it; a null counts as
    present); queries: ``pairs.modality`` (from ``query_modality``: text | image | both).
    ``catalog`` None (features built in memory): every item has both."""
    flags = {"has_image": np.ones(n_items, bool), "has_title": np.ones(n_items, bool)}
    if catalog is not None:
        import pyarrow.parquet as pq

        names = pq.read_schema(catalog.path).names
        cols = [c for c in flags if c in names]
        if cols:
            t = pq.read_table(catalog.path, columns=["item_id", *cols])
            if not np.array_equal(t.column("item_id").to_numpy().astype(np.int64), catalog.item_ids):
                raise MMRankError(f"{catalog.path}: item rows changed while reading {cols}")
            for c in cols:
                flags[c] = np.asarray([v is not False for v in t.column(c).to_pylist()], bool)
    return ModalityInputs(torch.from_numpy(flags["has_image"]), torch.from_numpy(flags["has_title"]),
                          np.asarray(pairs.modality))


class Objective(nn.Module):
    """The variant's loss terms: query->item InfoNCE (+queue), item->query InfoNCE, triplet; the
    switches' alignment and click-visual terms."""

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        use = cfg.uses()
        nd = cfg.nested_dims
        self.q2i = InfoNCELoss(cfg.temperature, nested_dims=nd, name="contrastive_loss")
        self.i2q = (InfoNCELoss(cfg.temperature, nested_dims=nd, name="contrastive_loss_item")
                    if cfg.symmetric else None)
        self.triplet = TripletLoss(cfg.margin, cfg.triplet_weight, nd) if use["triplet"] else None
        self.align = (AlignmentLoss(cfg.align_weight, cfg.temperature)
                      if cfg.switches()["align"] and use["queries"] else None)
        self.click_visual = (ClickVisualLoss(cfg.click_visual_weight, cfg.click_visual_view_weight,
                                             cfg.temperature)
                             if cfg.switches()["click_visual"] and use["queries"] else None)


def config_digest(cfg: PretrainConfig) -> str:
    """Hash of everything that shapes the trajectory (not the checkpoint cadence or resume flag; the
    fine-tuning fields only for the row that reads them)."""
    skip = {"checkpoint_every", "resume"} | (set() if cfg.end_to_end() else set(FINETUNE_FIELDS))
    d = cfg.model_dump(mode="json", exclude=skip)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def lr_at(cfg: PretrainConfig, step: int, total: int, lr: float | None = None,
          warmup: int | None = None) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr``; ``lr`` / ``warmup`` (default ``cfg.lr`` /
    ``cfg.warmup_steps``): a parameter group's own (:func:`mmrank.pretrain.finetune.param_groups`)."""
    lr = cfg.lr if lr is None else lr
    warmup = cfg.warmup_steps if warmup is None else warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _check(cfg: PretrainConfig, env: DistEnv) -> None:
    if any(d > cfg.dim for d in cfg.nested_dims):
        raise ConfigError(f"nested_dims {cfg.nested_dims}: every prefix must be <= dim {cfg.dim}")
    if cfg.batch_size % env.world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {env.world} ranks")


def resident(tables: list[torch.Tensor], device: torch.device, share: float = 0.5) -> bool:
    """Whether the cached tables stay on ``device`` whole: always on the CPU; on CUDA when together
    they take at most ``share`` of its free memory (else each batch's rows are copied over)."""
    if device.type != "cuda":
        return True
    need = sum(t.numel() * t.element_size() for t in tables)
    free, _ = torch.cuda.mem_get_info(device)
    return need <= share * free


def take(table: torch.Tensor, device: torch.device, *index) -> torch.Tensor:
    """``table[index]`` on ``device``: the rows are gathered where the table lives (the index arrays
    or tensors moved there first), then moved (pinned, non-blocking) when that is not ``device``."""
    at = table.device
    ix = tuple(to_device(i if isinstance(i, torch.Tensor)
                         else torch.as_tensor(np.asarray(i), dtype=torch.long), at) for i in index)
    return to_device(table[ix[0] if len(ix) == 1 else ix], device)


def train(cfg: PretrainConfig, feats: Features, pairs: PairTable, item_ids: np.ndarray,
          env: DistEnv | None = None, ckpt_dir: Path | None = None,
          image_tail: nn.Module | None = None,
          log: Callable[[str], None] = print, data_digest: str = "",
          modality: ModalityInputs | None = None, aug: AugmentedFeatures | None = None,
          report: dict | None = None, clicks: ClickVisualInputs | None = None,
          text_tail: nn.Module | None = None, device: torch.device | None = None,
          bf16: bool = True) -> SCLModel:
    """Train one variant (not ``off-the-shelf``) and return the online model.

    Args:
        cfg: the stage config (``variant`` picks the loss terms).
        feats: cached backbone features (see :func:`mmrank.pretrain.data.build_features`).
        pairs: the pair table (train rows are used; CLIP-E uses the items themselves).
        item_ids: (N,) item ids by catalog row (inside, items are named by row: masks, queue, log_q).
        env: the process group (default: from torchrun's environment).
        ckpt_dir: where to checkpoint and resume from (None: no checkpoints).
        image_tail: the fine-tuned end of the image backbone (``trainable_blocks > 0``), or the
            whole network from pixels (``scl-finetune``, :mod:`mmrank.pretrain.finetune`).
        text_tail: the fine-tuned text encoder from tokens (``scl-finetune``), or None.
        data_digest: the digest of the tables the features and pairs came from
            (:mod:`mmrank.lineage`): a checkpoint made from other data is not resumed.
        modality: the items' and queries' modality flags (:func:`modality_inputs`; None: all present).
        aug: the co-augmented item features (needed with ``coaug``).
        clicks: the click pairs and photo views (needed with ``click_visual``,
            :class:`mmrank.pretrain.clicks.ClickVisualInputs`).
        report: filled with ``epochs`` (one record per epoch) and ``dropped`` (filter: pair rows
            dropped, by epoch).
        device: where to train (None: the CPU); the returned model is on it.
        bf16: bf16 autocast of the forward on CUDA (fp32 master weights); ignored on the CPU.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    env = env or DistEnv.from_env(dev)
    _check(cfg, env)
    use = cfg.uses()
    if not use["train"]:
        raise ConfigError("the off-the-shelf variant has nothing to train")
    sw = cfg.switches()
    if sw["coaug"] and aug is None:
        raise ConfigError("coaug: the augmented item features were not built (see pretrain.augment)")
    if aug is not None and not sw["coaug"]:
        aug = None
    if sw["click_visual"] and clicks is None:
        raise ConfigError("click_visual: the click pairs and photo views were not built "
                          "(see pretrain.clicks)")
    modality = modality or modality_inputs(None, pairs, len(item_ids))
    torch.manual_seed(cfg.seed)
    d_img = feature_dim(image_tail, feats.item_img)
    # initialised on the host (the same weights on every device), then moved
    model = SCLModel(d_img, feature_dim(text_tail, feats.item_txt), cfg.dim, cfg.hidden, image_tail,
                     moe=sw["moe"], text_tail=text_tail).to(dev)
    objective = Objective(cfg).to(dev)
    momentum = copy.deepcopy(model) if use["moco"] else None
    queue = MomentumQueue(cfg.dim, cfg.queue_size).to(dev) if use["moco"] else None
    if momentum is not None:
        for p in momentum.parameters():
            p.requires_grad_(False)
    groups = param_groups(cfg, model, objective)  # one group; scl-finetune: heads, image, text
    params = [p for g in groups for p in g.params]
    opt = torch.optim.AdamW([{"params": g.params, "lr": g.lr} for g in groups], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    modules: dict[str, nn.Module] = {"model": model, "objective": objective}
    if momentum is not None and queue is not None:
        modules.update(momentum=momentum, queue=queue)

    rows = (np.arange(len(item_ids)) if use["queries"] is False
            else np.flatnonzero(~pairs.test))
    batch = min(cfg.batch_size, len(rows) - len(rows) % env.world)
    if batch < 2 * env.world:
        raise ConfigError(f"only {len(rows)} training rows: too few for a batch")
    per_rank = batch // env.world
    steps_per_epoch = len(rows) // batch
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    # the checkpoint belongs to this config *and* this data (a regenerated market starts afresh)
    data_fp = hashlib.sha256(np.ascontiguousarray(pairs.pos).tobytes()
                             + np.ascontiguousarray(item_ids).tobytes() + data_digest.encode()).hexdigest()[:8]
    digest = f"{config_digest(cfg)}-{data_fp}"

    step = 0
    if ckpt_dir is not None and cfg.resume and (Path(ckpt_dir) / FILE).exists():
        from safetensors import safe_open

        with safe_open(str(Path(ckpt_dir) / FILE), framework="pt") as f:
            same = (f.metadata() or {}).get("config") == digest
        if same:
            step, _ = load_checkpoint(Path(ckpt_dir), modules, opt, device=dev)
            log(f"resumed {cfg.variant} from {ckpt_dir} at step {step}/{total}")
        elif env.main:
            log(f"ignoring checkpoint in {ckpt_dir}: it was made with another config")
    log_q = None
    if use["logq"] and use["queries"]:
        # how often each item (by row) is drawn as a positive, add-one smoothed (training pairs only)
        counts = np.bincount(pairs.pos[rows], minlength=len(item_ids)).astype(np.float64) + 1.0
        log_q = torch.from_numpy(np.log(counts / counts.sum())).float().to(dev)
    every = cfg.checkpoint_every or steps_per_epoch

    # the cached tables: on the device whole when they fit, else rows copied per batch (take)
    tables = {"item_img": feats.item_img, "item_txt": feats.item_txt, "text_q": feats.text_q,
              "image_q": feats.image_q, "has_img": modality.item_img, "has_txt": modality.item_txt}
    if aug is not None:
        tables.update(aug_images=aug.images, aug_titles=aug.titles)
    if clicks is not None:
        tables["views"] = clicks.views
    if resident(list(tables.values()), dev):
        tables = {k: to_device(t, dev) for k, t in tables.items()}

    def idx(a) -> torch.Tensor:
        """A host index array as a long tensor on the device."""
        return to_device(torch.as_tensor(np.asarray(a), dtype=torch.long), dev)

    def queries(r: np.ndarray) -> torch.Tensor:
        """Query vectors of pair rows ``r``, in order: ``(b, D)``."""
        mod = modality.query[r]
        t_idx, i_idx = np.flatnonzero(mod == TEXT), np.flatnonzero(mod == IMAGE)
        b_idx = np.flatnonzero(mod == BOTH)
        parts = []
        text_q, image_q = tables["text_q"], tables["image_q"]
        if len(t_idx):
            parts.append(model.text_query(take(text_q, dev, feats.qrow[r[t_idx]])))
        if len(i_idx):
            parts.append(model.image_query(take(image_q, dev, feats.qrow[r[i_idx]])))
        if len(b_idx):
            assert feats.qrow_image is not None
            rb = r[b_idx]
            parts.append(model.query(take(image_q, dev, feats.qrow_image[rb]),
                                     take(text_q, dev, feats.qrow[rb]),
                                     torch.full((len(rb),), BOTH, device=dev)))
        inv = np.argsort(np.concatenate([t_idx, i_idx, b_idx]), kind="stable")
        return torch.cat(parts)[idx(inv)]

    def item_inputs(ir: np.ndarray, augmented: bool) -> tuple[torch.Tensor, ...]:
        """``(h_img, h_title, has_img, has_txt)`` of item rows ``ir``; with co-augmentation each
        item takes a random view and title (the step's seeded torch RNG)."""
        hi, ht = take(tables["has_img"], dev, ir), take(tables["has_txt"], dev, ir)
        if not augmented or aug is None:
            return take(tables["item_img"], dev, ir), take(tables["item_txt"], dev, ir), hi, ht
        # drawn on the host (the step's seeded CPU generator): the same views on every device
        v = torch.randint(0, aug.images.shape[0], (len(ir),))
        t = torch.randint(0, aug.titles.shape[0], (len(ir),))
        ir_t = torch.as_tensor(np.asarray(ir), dtype=torch.long)
        return (take(tables["aug_images"], dev, v, ir_t), take(tables["aug_titles"], dev, t, ir_t),
                hi, ht)

    def items(ir: np.ndarray, augmented: bool = True, net: nn.Module | None = None) -> torch.Tensor:
        return (net or model).item(*item_inputs(ir, augmented))

    cv_per = cfg.click_visual_batch // env.world          # click-visual rows per rank and step
    if objective.click_visual is not None and cv_per < 1:
        raise ConfigError(f"click_visual_batch {cfg.click_visual_batch}: fewer than one row per rank")

    def click_visual_terms(step: int) -> dict[str, torch.Tensor]:
        """The two click-visual terms of ``step``: click pairs drawn uniformly from the pairs,
        photos uniformly from the catalog, two distinct views each (seeded by ``(seed, step)``)."""
        assert clicks is not None and objective.click_visual is not None
        cv = objective.click_visual
        rng = np.random.default_rng([cfg.seed, step, 22])
        glob = cv_per * env.world
        lo = env.rank * cv_per
        pos = torch.arange(cv_per, device=dev) + lo
        out: dict[str, torch.Tensor] = {}
        n = len(clicks.first)
        if n:
            pick = rng.choice(n, glob, replace=n < glob)[lo:lo + cv_per]
            a_r, b_r = clicks.first[pick], clicks.second[pick]
            za = model.image_query(take(tables["item_img"], dev, a_r))
            zb = model.image_query(take(tables["item_img"], dev, b_r))
            b_ids = idx(b_r)
            out.update(cv.click_term(za, env.gather_with_grad(zb), pos, idx(a_r), b_ids,
                                     env.gather(b_ids)))
        else:
            out[cv.CLICK] = torch.zeros((), device=dev)
        rows_p = clicks.photo_rows
        n_views = int(clicks.views.shape[0])
        if len(rows_p) and n_views >= 2:
            it = rng.choice(rows_p, glob, replace=len(rows_p) < glob)[lo:lo + cv_per]
            va = rng.integers(0, n_views, glob)[lo:lo + cv_per]
            vb = (va + rng.integers(1, n_views, glob)[lo:lo + cv_per]) % n_views  # another view
            it_t = torch.as_tensor(it, dtype=torch.long)
            xa = model.image_query(take(tables["views"], dev, va, it_t))
            xb = model.image_query(take(tables["views"], dev, vb, it_t))
            it_d = to_device(it_t, dev)
            out.update(cv.view_term(xa, env.gather_with_grad(xb), pos, it_d, env.gather(it_d)))
        else:
            out[cv.VIEW] = torch.zeros((), device=dev)
        return out

    pair_filter = PairFilter(cfg.filter_warmup_epochs, cfg.filter_share) if sw["filter"] else None
    kept_epoch: tuple[int, np.ndarray] | None = None

    @torch.no_grad()
    def similarity(r: np.ndarray) -> np.ndarray:
        """Cosine of each training pair's query and positive item under the current model."""
        was, tally = model.training, model.tally
        model.eval()
        model.tally = None
        out = []
        with autocast(dev, bf16):
            for a in range(0, len(r), 1024):
                c = r[a:a + 1024]
                out.append((queries(c).float() * items(pairs.pos[c], augmented=False).float()).sum(-1))
        model.train(was)
        model.tally = tally
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)

    epochs_log: list[dict] = []
    sums: dict[str, torch.Tensor] = {}     # float64 on the device: no host sync per step
    n_terms = 0
    model.tally = {} if sw["moe"] else None

    def close_epoch(epoch: int) -> None:
        nonlocal sums, n_terms
        rec: dict = {"epoch": epoch, "steps": n_terms,
                     "loss": {k: float(v) / max(n_terms, 1) for k, v in sums.items()}}
        if sw["moe"]:
            rec["router_load"] = model.router_load()
            model.tally = {}
        if pair_filter is not None:
            rec["dropped_share"] = pair_filter.dropped_share(epoch, len(rows))
        epochs_log.append(rec)
        if env.main:
            parts = [f"{k}={v:.4f}" for k, v in rec["loss"].items()]
            for role, load in rec.get("router_load", {}).items():
                parts.append(f"router[{role}]=" + "/".join(f"{e}:{x:.2f}" for e, x in load.items()))
            if "dropped_share" in rec:
                parts.append(f"dropped_share={rec['dropped_share']:.3f}")
            log(f"epoch {epoch} ({cfg.variant}): " + " ".join(parts))
        sums, n_terms = {}, 0

    model.train()
    t0, seen = time.time(), 0
    progress = None
    if env.main and total - step > 0:
        from rich.progress import Progress

        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task(f"pretrain {cfg.variant}", total=total, completed=step)
    try:
        while step < total:
            epoch, j = divmod(step, steps_per_epoch)
            if pair_filter is not None and pair_filter.active(epoch):
                if kept_epoch is None or kept_epoch[0] != epoch:  # (a resumed run re-scores here)
                    kept_epoch = (epoch, pair_filter.select(epoch, rows, similarity(rows)))
                kept = kept_epoch[1]
                perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(kept))
                # as many steps as an unfiltered epoch: the kept pairs, wrapped around
                glob = kept[perm[np.arange(j * batch, (j + 1) * batch) % len(kept)]]
            else:
                perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(rows))
                glob = rows[perm[j * batch:(j + 1) * batch]]
            local = glob[env.rank * per_rank:(env.rank + 1) * per_rank]
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            for g, group in zip(opt.param_groups, groups):
                g["lr"] = lr_at(cfg, step, total, group.lr, group.warmup)
            offset = env.rank * per_rank
            pos_index = torch.arange(per_rank, device=dev) + offset
            with autocast(dev, bf16):  # bf16 forward on CUDA; the losses' logits in fp32
                km = None
                if use["queries"]:
                    item_rows = pairs.pos[local]
                    q = queries(local)
                    k_in = item_inputs(item_rows, True)
                    k = model.item(*k_in)
                    if momentum is not None and cfg.key_path == "momentum":
                        with torch.no_grad():  # MoCo keys: the momentum encoder of this step
                            momentum.train()
                            km = momentum.item(*k_in)
                else:  # CLIP-E: an item's image against its own title
                    item_rows = local
                    q = model.image_query(take(tables["item_img"], dev, item_rows))
                    k = model.text_query(take(tables["item_txt"], dev, item_rows))
                # items are named by catalog row (one row per item id): masks, queue and log_q use rows
                ids = idx(item_rows)
                key = km if (cfg.key_path == "momentum" and km is not None) else k
                k_all, ids_all = env.gather_with_grad(key), env.gather(ids)
                # the queue itself (not its tensors): its normalised prefixes and sorted ids are cached
                terms = objective.q2i(q, k_all, pos_index, queue=queue, q_ids=ids, k_ids=ids_all,
                                      log_q=log_q)
                if objective.i2q is not None:
                    terms.update(objective.i2q(k, env.gather_with_grad(q), pos_index, q_ids=ids,
                                               k_ids=ids_all))
                if objective.triplet is not None:
                    neg = pairs.neg[local]
                    valid = to_device(torch.from_numpy(neg >= 0), dev)
                    nr = np.where(neg >= 0, neg, item_rows)
                    kn = items(nr)
                    terms.update(objective.triplet(q, k, kn, valid))
                if objective.align is not None:  # MOON2.0's item level: each item's image vs its title
                    img_v, txt_v = model.item_image_title(k_in[0], k_in[1])
                    terms.update(objective.align(img_v, txt_v, ids, k_in[2] & k_in[3]))
                if objective.click_visual is not None:  # issue 22: click pairs + two photo views
                    terms.update(click_visual_terms(step))
                loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise MMRankError(f"pretrain {cfg.variant}: loss is {float(loss)} at step {step} "
                                  f"({', '.join(f'{k}={float(v):.3g}' for k, v in terms.items())})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            env.average_gradients(params)
            opt.step()
            if momentum is not None and queue is not None:
                if cfg.key_path == "online":  # keys of the updated momentum encoder
                    momentum_update(model, momentum, cfg.momentum)
                    with torch.no_grad(), autocast(dev, bf16):
                        momentum.train()
                        km = momentum.item(*k_in)
                else:  # MoCo: enqueue this step's keys, then move the momentum encoder
                    momentum_update(model, momentum, cfg.momentum)
                queue.enqueue(env.gather(km), ids_all)
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + v.detach().double()  # (float64 as float() was)
            n_terms += 1
            step += 1
            seen += batch
            if step % steps_per_epoch == 0 or step == total:
                close_epoch(epoch)
            if progress is not None:
                progress.update(task, completed=step,
                                description=f"pretrain {cfg.variant} loss={float(loss.detach()):.3f}")
            if ckpt_dir is not None and (step % every == 0 or step == total):
                if env.main:
                    save_checkpoint(Path(ckpt_dir), modules, opt, step,
                                    {"config": digest, "variant": cfg.variant})
                env.barrier()
    finally:
        if progress is not None:
            progress.stop()
    model.tally = None
    if report is not None:
        report["epochs"] = epochs_log
        if pair_filter is not None:
            report["dropped"] = pair_filter.dropped
    if env.main and seen:
        synchronize(dev)
        dt = time.time() - t0
        log(f"pretrain {cfg.variant}: {step} steps, {seen / max(dt, 1e-9):.0f} pairs/s, "
            f"tau={objective.q2i.temperature:.4f}")
    model.eval()
    return model
