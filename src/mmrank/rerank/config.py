"""The `rerank` section of the run config: what `mmrank rerank train / compare` run, and the training
settings (:class:`mmrank.rerank.trainer.RerankTrainConfig`)."""

from __future__ import annotations

from pydantic import Field

from mmrank.config import StrictModel
from mmrank.rerank.trainer import RerankTrainConfig


class RerankConfig(StrictModel):
    """`mmrank rerank train / compare`: the model, seeds, models compared, beam width and training."""

    model: str = Field("armmt", description="`rerank train`: the model trained (see `rerank compare` for names)")
    seed: int = Field(0, description="`rerank train`: seed")
    seeds: int = Field(3, ge=1, description="`rerank compare`: seeds per model")
    models: list[str] | None = Field(None, description="`rerank compare`: the models compared (None: logged, "
                                     "every model and the ablations)")
    beam: int = Field(0, ge=0, description="`rerank compare`: > 0 adds armmt+beam (generator-evaluator mode, "
                      "this beam width)")
    max_test_lists: int | None = Field(None, ge=1, description="`rerank compare`: the first N test lists only")
    threads: int | None = Field(None, ge=1, description="torch threads (None: 1 on an oversubscribed machine)")
    train: RerankTrainConfig = Field(default_factory=RerankTrainConfig, description="optimisation "
                                     "(RerankTrainConfig)")
