"""Settings of `mmrank analyze exchange-rate` and `mmrank analyze scaling` (:class:`AnalyzeConfig`).

The pre-training and CTR settings themselves come from the run (``R/config.yaml``'s ``pretrain`` and
``ctr`` sections, defaults where the run recorded none), so each point is trained as the run's own
stages train; only the budget knobs below are set here.
"""

from __future__ import annotations

from pydantic import Field

from mmrank.config import StrictModel

# Checkpoints of `exchange-rate` unless --points names others: every encoder the run already has under
# R/pretrain/ ("reuse"), SCL stopped after one epoch, and SCL at a small width.
DEFAULT_POINTS = ["reuse", "scl@e1", "scl@d16"]


class AnalyzeConfig(StrictModel):
    """The budget and statistics of the MOON analyses (issue 21)."""

    seeds: int = Field(1, ge=1, description="CTR seeds per point (the same seeds for every point; the "
                       "ID model is trained once per seed)")
    points: list[str] = Field(default_factory=lambda: list(DEFAULT_POINTS),
                              description="exchange-rate checkpoints: 'reuse' (every encoder under "
                              "R/pretrain/), a variant name (reused when R/pretrain/<variant>/ exists, "
                              "else trained), or <variant>@<mod>... with mods eN (epochs), dN (width), "
                              "kN (queue size K), fX (share of the training pairs)")
    make_epochs: int | None = Field(None, ge=0, description="MAKE pre-training epochs (None: the run's "
                                    "ctr.make_epochs)")
    max_train_rows: int | None = Field(None, ge=1, description="CTR: train on the latest N training rows "
                                       "(None: the run's ctr.max_train_rows)")
    pretrain_epochs: int | None = Field(None, ge=1, description="epochs of the encoders the analyses "
                                        "train (None: the run's pretrain.epochs)")
    fractions: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0],
                                   description="scaling: shares of the run's training pairs")
    extra_runs: list[str] = Field(default_factory=list, description="scaling: other runs (e.g. larger "
                                  "`market generate` sizes) whose full pairs add points to the pairs axis, "
                                  "trained with this run's settings")
    queue_sizes: list[int] = Field(default_factory=lambda: [256, 1024, 4096, 16384],
                                   description="scaling: MoCo queue sizes K")
    history_lens: list[int] = Field(default_factory=lambda: [5, 10, 20, 50],
                                    description="scaling: CTR behaviour lengths L (<= 50, the stored history)")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples")
    boot_seed: int = Field(0, description="seed of every bootstrap")
    acc_threshold: float = Field(0.01, gt=0, description="saturation of an Acc@1 curve: gain per "
                                 "doubling below this (absolute accuracy)")
    gain_threshold: float = Field(0.001, gt=0, description="saturation of a downstream curve: GAUC "
                                  "gain per doubling below this (absolute GAUC)")
