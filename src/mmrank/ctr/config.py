"""The `ctr` section of the run config: what `mmrank ctr train / compare` run, and the model and
training settings (:class:`CtrConfig` with its :class:`MakeConfig`, :class:`TrainConfig`)."""

from __future__ import annotations

from pydantic import Field

from mmrank.config import StrictModel
from mmrank.ctr.models import PAPER_STRATEGIES, CtrConfig, Strategy
from mmrank.ctr.trainer import TrainConfig


class CtrStageConfig(StrictModel):
    """`mmrank ctr train / compare`: strategies, seeds, MAKE epochs, and the model and training settings."""

    strategy: Strategy = Field("id", description="`ctr train`: the strategy trained (model.strategy is "
                               "set from it)")
    seed: int = Field(0, description="`ctr train`: seed")
    seeds: int = Field(3, ge=1, description="`ctr compare`: seeds per strategy")
    strategies: list[Strategy] = Field(default_factory=lambda: list(PAPER_STRATEGIES),
                                       description="`ctr compare`: the strategies compared "
                                       "(default the paper's six; sid, sid+simtier+make when named)")
    make_epochs: int = Field(4, ge=0, description="MAKE pre-training epochs E (0 = joint training)")
    curve: list[int] = Field(default_factory=lambda: [0, 1, 2, 4, 8],
                             description="`ctr compare`: MAKE epochs curve (Figure 6c); [] for none")
    epochs_curve: int = Field(0, ge=0, description="`ctr compare`: Figure 3, ID vs multimodal test AUC over "
                              "N epochs (0: not drawn)")
    max_train_rows: int | None = Field(None, ge=1, description="train on the latest N training rows only")
    threads: int | None = Field(None, ge=1, description="torch threads")
    model: CtrConfig = Field(default_factory=CtrConfig, description="architecture (CtrConfig; MAKE in "
                             "model.make)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation (TrainConfig)")
