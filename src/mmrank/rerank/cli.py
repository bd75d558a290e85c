"""`mmrank rerank ...`: train one re-ranker, compare all of them. Thin shells over
:mod:`mmrank.rerank.run` and :mod:`mmrank.rerank.compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmrank.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Re-rank search lists: ARMMT, SEQ+MD and baselines (logged "
                                             "order, DNN, ARMMT-concat, PRM, MMoE, ESMM), with ablations.")


def _train_cfg(epochs: int, batch_size: int, max_train_lists: Optional[int]):
    from mmrank.rerank.trainer import RerankTrainConfig

    return RerankTrainConfig(epochs=epochs, batch_size=batch_size, max_train_lists=max_train_lists)


@app.command("train")
def train_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/data/lists.parquet, RUN/encoder)"),
    model: str = typer.Option("armmt", "--model", help="dnn | armmt | armmt-concat | prm | mmoe | esmm | seqmd | "
                                                     "seqmd-plain | an ablation (see `compare`)"),
    seed: int = typer.Option(0),
    epochs: int = typer.Option(1, min=1),
    batch_size: int = typer.Option(64, min=1, help="lists per step"),
    max_train_lists: Optional[int] = typer.Option(None, help="the latest N training lists only"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
) -> None:
    """Train one re-ranker; writes RUN/rerank/<model>/ (weights, vocabularies, config, metrics)."""
    from mmrank.rerank.models import MODELS
    from mmrank.rerank.run import train_model

    if model not in MODELS:
        raise ConfigError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    m = train_model(run, model, seed=seed, train_cfg=_train_cfg(epochs, batch_size, max_train_lists))
    a = m["auc"]
    typer.echo(f"{model}: auc click {a['click']:.4f} cart {a['cart']:.4f} purchase {a['purchase']:.4f} "
               f"ndcg@10 {m['ndcg@10']:.4f} expected_gmv {m['expected_gmv']} -> {run}/rerank/{model}/")


@app.command("compare")
def compare_cmd(
    run: Path = typer.Option(..., "--run"),
    seeds: int = typer.Option(3, min=1),
    models: str = typer.Option("", help="comma-separated (default: logged, every model and the ablations)"),
    epochs: int = typer.Option(1, min=1),
    batch_size: int = typer.Option(64, min=1),
    max_train_lists: Optional[int] = typer.Option(None, help="the latest N training lists only"),
    max_test_lists: Optional[int] = typer.Option(None, help="the first N test lists only"),
    beam: int = typer.Option(0, help="> 0: add armmt+beam, the generator-evaluator mode with this beam width"),
    threads: Optional[int] = typer.Option(None),
) -> None:
    """Train every model over SEEDS seeds; write RUN/rerank/compare.json, compare.md and plots."""
    from mmrank.rerank.compare import compare

    if threads:
        import torch

        torch.set_num_threads(threads)
    names = [m.strip() for m in models.split(",") if m.strip()] or None
    compare(run, seeds=seeds, models=names, train_cfg=_train_cfg(epochs, batch_size, max_train_lists),
            max_test_lists=max_test_lists, beam=beam)
    typer.echo((run / "rerank" / "compare.md").read_text())
