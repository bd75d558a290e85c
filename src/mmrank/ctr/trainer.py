"""Training and inference for CTR models (apart from the models).

The epoch rules of Sheng et al. (CIKM'24, Sec. 4.1, observation 2) are part of this API:

* :func:`train` trains a model whose ID embeddings see every sample once: ``id_epochs`` must be 1
  (ID models overfit from the second epoch on) unless ``allow_id_multi_epoch=True`` says otherwise.
* :func:`pretrain_make` trains a :class:`~mmrank.ctr.models.MakeModule`, which holds only multimodal
  parameters, for ``epochs`` epochs (multi-epoch is what those parameters need); it refuses a module that
  holds an ID embedding.

Example::

    >>> stats = pretrain_make(make, enc, enc.train_rows(), epochs=4)   # doctest: +SKIP
    >>> model = CtrModel(cfg, sizes, vectors, make=make, freeze_make=True)  # doctest: +SKIP
    >>> stats = train(model, enc, enc.train_rows(), id_epochs=1)        # doctest: +SKIP
    >>> p = predict(model, enc, enc.test_rows())                        # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from mmrank.config import StrictModel
from mmrank.ctr.data import EncodedSamples, iter_batches
from mmrank.ctr.models import CtrModel, MakeModule
from mmrank.ctr.optim import LazyAdam
from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import HardwareConfig, autocast, batch_to, model_device, resolve_device
from mmrank.errors import ConfigError


class TrainConfig(StrictModel):
    """Optimisation settings (Adam, binary cross-entropy)."""

    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    id_lr: float | None = Field(None, gt=0, description="learning rate of ID embeddings (default: lr)")
    make_lr: float = Field(1e-3, gt=0)
    aux_weight: float = Field(1.0, ge=0, description="weight of auxiliary losses (MAKE's Eq. 5 at E=0)")
    seed: int = 0


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=True)


def placement(hardware: HardwareConfig | None = None) -> dict:
    """The keywords of :func:`train`, :func:`pretrain_make` and :func:`predict` for ``hardware``
    (None: :class:`~mmrank.device.HardwareConfig`'s defaults, auto): ``device``, ``bf16``,
    ``pin_memory``. Raises :class:`~mmrank.device.DeviceError` for a device this machine lacks."""
    hw = hardware or HardwareConfig()
    return {"device": resolve_device(hw.device), "bf16": hw.bf16, "pin_memory": hw.pin_memory}




def _has_embedding(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Embedding) for m in module.modules())


class _Optimizers:
    """Adam for dense parameters, :class:`~mmrank.ctr.optim.LazyAdam` for embeddings with sparse gradients."""

    def __init__(self, opts: list[torch.optim.Optimizer]) -> None:
        self.opts = opts

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.opts:
            o.step()


def make_optimizer(model: CtrModel, cfg: TrainConfig) -> _Optimizers:
    """The model's optimisers: fused Adam on the dense parameters (ID tables at ``id_lr``), LazyAdam on
    the sparse embedding tables."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    id_params = {id(p) for p in model.id_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    id_lr = cfg.id_lr or cfg.lr
    dense = [{"params": [p for p in params if id(p) not in id_params]},
             {"params": [p for p in params if id(p) in id_params and id(p) not in sparse_ids], "lr": id_lr}]
    opts: list[torch.optim.Optimizer] = []
    dense = [g for g in dense if g["params"]]
    if dense:
        opts.append(torch.optim.Adam(dense, lr=cfg.lr, fused=True))
    sparse = [p for p in params if id(p) in sparse_ids]
    if sparse:
        opts.append(LazyAdam(sparse, lr=id_lr))
    return _Optimizers(opts)


def train(model: CtrModel, data: EncodedSamples, rows: np.ndarray | None = None, *, id_epochs: int = 1,
          allow_id_multi_epoch: bool = False, cfg: TrainConfig | None = None, progress: bool = True,
          on_epoch_end: Callable[[int], None] | None = None, device: torch.device | None = None,
          bf16: bool = True, pin_memory: bool = True) -> dict:
    """Train ``model`` on ``rows`` (default: the training split) for ``id_epochs`` passes.

    The one-epoch rule: a model with ID embeddings is trained for exactly one epoch;
    ``id_epochs > 1`` raises :class:`ConfigError` unless ``allow_id_multi_epoch=True``.
    ``device``: where it trains (default: where the model is); the model (its embedding tables, MAKE
    and the frozen representations) moves there, batches follow (pinned, non-blocking). On CUDA the
    forward pass and the loss run under bf16 autocast when ``bf16`` (fp32 master weights); the CPU
    never autocasts. Returns ``{"loss": mean loss of each epoch, "samples_per_s": ..., "seconds": ...}``.
    """
    cfg = cfg or TrainConfig()
    if id_epochs < 1:
        raise ConfigError(f"id_epochs: must be >= 1, got {id_epochs}")
    if id_epochs > 1 and model.id_parameters() and not allow_id_multi_epoch:
        raise ConfigError(f"id_epochs={id_epochs}: the one-epoch rule trains ID embeddings for exactly one "
                          "epoch (they overfit from the second on); pre-train multimodal parameters "
                          "for more epochs with pretrain_make(), or pass allow_id_multi_epoch=True")
    rows = data.train_rows() if rows is None else np.asarray(rows)
    dev = model_device(model, device)
    model.to(dev)
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    n_batches = (len(rows) + cfg.batch_size - 1) // cfg.batch_size
    losses, seen, t0 = [], 0, time.perf_counter()
    model.train()
    with _progress(progress) as bar:
        for epoch in range(id_epochs):
            task = bar.add_task(f"train {model.cfg.strategy} epoch {epoch + 1}/{id_epochs}", total=n_batches)
            total, n = 0.0, 0
            for batch in iter_batches(data, rows, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch,
                                      history_len=model.cfg.history_len):
                batch = batch_to(batch, dev, pin_memory)
                with autocast(dev, bf16):
                    out = model(batch)
                    loss = model.loss(out, batch, cfg.aux_weight)["total"]   # click (+ MAKE's Eq. 5 if joint)
                total += optimizer_step(opt, loss) * len(batch["label"])
                n += len(batch["label"])
                bar.advance(task)
            losses.append(total / max(n, 1))
            seen += n
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    secs = time.perf_counter() - t0
    return {"loss": losses, "seconds": secs, "samples_per_s": seen / max(secs, 1e-9)}


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss`` (outside autocast); returns its value (fp32)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach().float())


def pretrain_make(module: MakeModule, data: EncodedSamples, rows: np.ndarray | None = None, *,
                  epochs: int, cfg: TrainConfig | None = None, progress: bool = True,
                  on_epoch_end: Callable[[int], None] | None = None, device: torch.device | None = None,
                  bf16: bool = True, pin_memory: bool = True) -> dict:
    """Multi-epoch pre-training of MAKE on the CTR task (Eq. 5), ``epochs`` passes over ``rows``.

    ``epochs=0`` does nothing (MAKE is then trained jointly with the ID model). ``on_epoch_end(e)`` is
    called after each epoch (e.g. to snapshot the module for the epochs curve, Figure 6c).
    ``device``, ``bf16``, ``pin_memory`` as :func:`train`.
    """
    cfg = cfg or TrainConfig()
    if not isinstance(module, MakeModule):
        raise ConfigError(f"pretrain_make: expected a MakeModule, got {type(module).__name__}")
    if _has_embedding(module):
        raise ConfigError("pretrain_make: the module holds an ID embedding; only multimodal parameters "
                          "are trained for several epochs (ID parameters: one epoch, see train())")
    if epochs < 0:
        raise ConfigError(f"epochs: must be >= 0, got {epochs}")
    rows = data.train_rows() if rows is None else np.asarray(rows)
    dev = model_device(module, device)
    module.to(dev)
    torch.manual_seed(cfg.seed + 7919)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=cfg.make_lr, fused=True)
    n_batches = (len(rows) + cfg.batch_size - 1) // cfg.batch_size
    losses, t0 = [], time.perf_counter()
    module.train()
    with _progress(progress) as bar:
        for epoch in range(epochs):
            task = bar.add_task(f"pretrain MAKE epoch {epoch + 1}/{epochs}", total=n_batches)
            total, n = 0.0, 0
            for batch in iter_batches(data, rows, cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 + epoch):
                batch = batch_to(batch, dev, pin_memory)
                with autocast(dev, bf16):
                    loss = F.binary_cross_entropy_with_logits(module.forward_batch(batch)["logit"].float(),
                                                              batch["label"])   # Eq. 5
                total += optimizer_step(opt, loss) * len(batch["label"])
                n += len(batch["label"])
                bar.advance(task)
            losses.append(total / max(n, 1))
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    return {"loss": losses, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict(model: nn.Module, data: EncodedSamples, rows: np.ndarray | None = None,
            batch_size: int = 4096, progress: bool = False, *, device: torch.device | None = None,
            bf16: bool = True, pin_memory: bool = True) -> np.ndarray:
    """Click probabilities ``(len(rows),)`` float64 for ``rows`` (default: the test split).

    ``device`` (default: where the model is), ``bf16`` (autocast on CUDA), ``pin_memory`` as :func:`train`.
    """
    rows = data.test_rows() if rows is None else np.asarray(rows)
    dev = model_device(model, device)
    model.to(dev)
    model.eval()
    out = []
    history_len = getattr(getattr(model, "cfg", None), "history_len", HISTORY_LEN)
    with _progress(progress) as bar:
        task = bar.add_task("predict", total=(len(rows) + batch_size - 1) // batch_size)
        for batch in iter_batches(data, rows, batch_size, history_len=history_len):
            batch = batch_to(batch, dev, pin_memory)
            with autocast(dev, bf16):
                res = model(batch) if not isinstance(model, MakeModule) else model.forward_batch(batch)
            out.append(torch.sigmoid(res["logit"].float()).double().cpu().numpy())
            bar.advance(task)
    return np.concatenate(out) if out else np.zeros(0)
