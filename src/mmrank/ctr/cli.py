"""`mmrank ctr ...`: train one strategy, compare all six, score new samples. Thin shells over
:mod:`mmrank.ctr.run` and :mod:`mmrank.ctr.compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mmrank.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="CTR models with multimodal representations (ID, Vector, "
                                             "SimScore, SimTier, MAKE, SimTier+MAKE).")


def _threads(threads: Optional[int]) -> None:
    from mmrank.threads import configure

    configure(threads or None)


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated integers, got {text!r}") from None


@app.command("train")
def train_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/data, RUN/embeddings)"),
    strategy: str = typer.Option("id", help="id | vector | simscore | simtier | make | simtier+make"),
    seed: int = typer.Option(0),
    make_epochs: int = typer.Option(4, help="MAKE pre-training epochs E (0 = joint training)"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
) -> None:
    """Train one strategy (ID parameters: one epoch); writes RUN/ctr/<strategy>/."""
    from mmrank.ctr.models import STRATEGIES
    from mmrank.ctr.run import train_strategy

    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    _threads(threads)
    m = train_strategy(run, strategy, seed=seed, make_epochs=make_epochs)
    typer.echo(f"{strategy}: auc {m['auc']:.4f} gauc {m['gauc']:.4f} logloss {m['logloss']:.4f} "
               f"-> {run}/ctr/{strategy}/")


@app.command("compare")
def compare_cmd(
    run: Path = typer.Option(..., "--run"),
    seeds: int = typer.Option(3, min=1),
    make_epochs: int = typer.Option(4, help="E for make and simtier+make"),
    curve: str = typer.Option("0,1,2,4,8", help="MAKE epochs curve (Figure 6c), comma-separated; '' for none"),
    strategies: str = typer.Option(",".join(("id", "vector", "simscore", "simtier", "make", "simtier+make"))),
    threads: Optional[int] = typer.Option(None),
    epochs_curve: int = typer.Option(0, min=0, help="Figure 3: ID vs multimodal test AUC over N epochs"),
    knowledge: Optional[str] = typer.Option(None, help="MAKE knowledge: compact | full (Sec. 4.3)"),
) -> None:
    """Train every strategy over SEEDS seeds; write RUN/ctr/compare.json, compare.md and plots."""
    from mmrank.ctr.compare import compare
    from mmrank.ctr.models import STRATEGIES, CtrConfig

    strats = tuple(s.strip() for s in strategies.split(",") if s.strip())
    for s in strats:
        if s not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {s!r}; expected {', '.join(STRATEGIES)}")
    _threads(threads)
    cfg = CtrConfig()
    if knowledge is not None:
        if knowledge not in ("compact", "full"):
            raise ConfigError(f"--knowledge: expected compact or full, got {knowledge!r}")
        cfg = CtrConfig.model_validate({**cfg.model_dump(), "make": {**cfg.make.model_dump(),
                                                                     "knowledge": knowledge}})
    compare(run, seeds=seeds, make_epochs=make_epochs, curve=_ints(curve, "--curve"), strategies=strats,
            cfg=cfg, epochs_curve=epochs_curve)
    typer.echo((run / "ctr" / "compare.md").read_text())


@app.command("predict")
def predict_cmd(
    run: Path = typer.Option(..., "--run"),
    strategy: str = typer.Option(..., help="a trained strategy under RUN/ctr/"),
    samples: Path = typer.Option(..., help="a CTR_SAMPLES Parquet file"),
    out: Path = typer.Option(..., help="output Parquet: request_id, item_id, position, score"),
    threads: Optional[int] = typer.Option(None),
) -> None:
    """Score new impressions with a trained model; write scores by request_id and item_id."""
    from mmrank.ctr.run import predict_file

    _threads(threads)
    n = predict_file(run, strategy, samples, out)
    typer.echo(json.dumps({"rows": n, "out": str(out)}))
