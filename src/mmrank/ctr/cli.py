"""`mmrank ctr ...`: train one strategy, compare all six, score new samples. Thin shells over
:mod:`mmrank.ctr.stage`.

Every setting (strategy, seeds, MAKE epochs, the model's :class:`CtrConfig` with its
:class:`MakeConfig`, the optimiser's :class:`TrainConfig`) comes from the ``ctr`` section of the run
config given with ``--config``; the flags given override it; ``R/config.yaml`` records what ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="CTR models with multimodal representations (ID, Vector, "
                                             "SimScore, SimTier, MAKE, SimTier+MAKE).")

_CONFIG = typer.Option(None, "--config", help="a run config YAML (its ctr section: strategies, seeds, "
                       "model incl. model.make, train); flags override it")
_DEVICE = typer.Option(None, "--device", help=DEVICE_HELP)


def _hardware(config: Optional[Path], device: Optional[str]):
    """The hardware section (config file, then --device), checked before any data is read."""
    from mmrank.run_config import hardware_config

    return hardware_config(config, device=device)


def _threads(threads: Optional[int]) -> None:
    from mmrank.threads import configure

    configure(threads or None)


def _ints(text: Optional[str], name: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated integers, got {text!r}") from None


def _strategies(text: Optional[str]) -> Optional[list[str]]:
    """``--strategies a,b``: the names, each checked against :data:`mmrank.ctr.models.STRATEGIES`."""
    from mmrank.ctr.models import STRATEGIES

    if text is None:
        return None
    strats = [x.strip() for x in text.split(",") if x.strip()]
    for x in strats:
        if x not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {x!r}; expected {', '.join(STRATEGIES)}")
    return strats


def _settings(config: Optional[Path], **flags: Any):
    from mmrank.run_config import stage_config

    return stage_config("ctr", config, {k: v for k, v in flags.items() if v is not None})


def _notes(run: Path) -> None:
    from mmrank.data.importer import substitutes_of

    subs = substitutes_of(run)
    if "impressions" in subs:
        typer.echo(f"note: {subs['impressions']}")


@app.command("train")
def train_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/data, RUN/embeddings)"),
    strategy: Optional[str] = typer.Option(None, help="id | vector | simscore | simtier | make | "
                                           "simtier+make | sid | sid+simtier+make | post | "
                                           "post+simtier+make (default id)"),
    seed: Optional[int] = typer.Option(None, help="default 0"),
    make_epochs: Optional[int] = typer.Option(None, help="MAKE pre-training epochs E (0 = joint training; "
                                              "default 4)"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
    config: Optional[Path] = _CONFIG,
    device: Optional[str] = _DEVICE,
) -> None:
    """Train one strategy (ID parameters: one epoch); writes RUN/ctr/<strategy>/."""
    from mmrank.config import record
    from mmrank.ctr.models import STRATEGIES
    from mmrank.ctr.stage import train_strategy

    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    s = _settings(config, strategy=strategy, seed=seed, make_epochs=make_epochs, threads=threads)
    s = s.model_copy(update={"model": s.model.model_copy(update={"strategy": s.strategy})})
    hw = _hardware(config, device)
    _threads(s.threads)
    _notes(run)
    m = train_strategy(run, s.strategy, seed=s.seed, make_epochs=s.make_epochs, cfg=s.model,
                       train_cfg=s.train, hardware=hw)
    record(run, "ctr", s)
    typer.echo(f"{s.strategy}: auc {m['auc']:.4f} gauc {m['gauc']:.4f} logloss {m['logloss']:.4f} "
               f"-> {run}/ctr/{s.strategy}/")


@app.command("compare")
def compare_cmd(
    run: Path = typer.Option(..., "--run"),
    seeds: Optional[int] = typer.Option(None, min=1, help="default 3"),
    make_epochs: Optional[int] = typer.Option(None, help="E for make and simtier+make (default 4)"),
    curve: Optional[str] = typer.Option(None, help="MAKE epochs curve (Figure 6c), comma-separated; '' "
                                        "for none (default 0,1,2,4,8)"),
    strategies: Optional[str] = typer.Option(None, help="comma-separated (default the paper's six; sid and "
                                             "sid+simtier+make when named, codes built on demand)"),
    max_train_rows: Optional[int] = typer.Option(None, help="train on the latest N training rows only"),
    threads: Optional[int] = typer.Option(None),
    epochs_curve: Optional[int] = typer.Option(None, min=0, help="Figure 3: ID vs multimodal test AUC over N "
                                               "epochs (default 0: none)"),
    knowledge: Optional[str] = typer.Option(None, help="MAKE knowledge: compact | full (Sec. 4.3; "
                                            "ctr.model.make.knowledge)"),
    add: bool = typer.Option(False, "--add", help="keep the rows of RUN/ctr/compare.json that --strategies "
                             "does not name (same seeds, data and settings, else an error), instead of "
                             "replacing the comparison"),
    config: Optional[Path] = _CONFIG,
    device: Optional[str] = _DEVICE,
) -> None:
    """Train every strategy over SEEDS seeds; write RUN/ctr/compare.json, compare.md and plots."""
    from mmrank.config import record
    from mmrank.ctr.stage import compare

    strats = _strategies(strategies)
    if knowledge is not None and knowledge not in ("compact", "full"):
        raise ConfigError(f"--knowledge: expected compact or full, got {knowledge!r}")
    s = _settings(config, seeds=seeds, make_epochs=make_epochs, curve=_ints(curve, "--curve"),
                  strategies=strats, max_train_rows=max_train_rows, threads=threads,
                  epochs_curve=epochs_curve,
                  model={"make": {"knowledge": knowledge}} if knowledge is not None else None)
    hw = _hardware(config, device)
    _threads(s.threads)
    _notes(run)
    compare(run, seeds=s.seeds, make_epochs=s.make_epochs, curve=tuple(s.curve),
            strategies=tuple(s.strategies), cfg=s.model, train_cfg=s.train, max_train_rows=s.max_train_rows,
            epochs_curve=s.epochs_curve, add=add, hardware=hw)
    record(run, "ctr", s)
    typer.echo((run / "ctr" / "compare.md").read_text())


@app.command("predict")
def predict_cmd(
    run: Path = typer.Option(..., "--run"),
    strategy: str = typer.Option(..., help="a trained strategy under RUN/ctr/"),
    samples: Path = typer.Option(..., help="a CTR_SAMPLES Parquet file"),
    out: Path = typer.Option(..., help="output Parquet: request_id, item_id, position, score"),
    threads: Optional[int] = typer.Option(None),
    config: Optional[Path] = _CONFIG,
    device: Optional[str] = _DEVICE,
) -> None:
    """Score new impressions with a trained model; write scores by request_id and item_id."""
    from mmrank.ctr.stage import predict_file

    s = _settings(config, threads=threads)
    hw = _hardware(config, device)
    _threads(s.threads)
    n = predict_file(run, strategy, samples, out, hardware=hw)
    typer.echo(json.dumps({"rows": n, "out": str(out)}))


@app.command("follow")
def follow_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/data, RUN/embeddings; never "
                             "RUN/truth)"),
    source: str = typer.Option("replay", help="replay (RUN/data/ctr_samples.parquet in event time) | redis "
                               "(the run's event stream through the online joiner)"),
    redis: Optional[str] = typer.Option(None, "--redis", help="--source redis: redis://host:port/db"),
    stream: Optional[str] = typer.Option(None, help="--source redis: stream key (default mmrank:events:<run>)"),
    idle_stop_s: Optional[float] = typer.Option(None, min=0, help="--source redis: stop when no entry came "
                                                "for this long (default 2)"),
    batch_events: Optional[int] = typer.Option(None, min=1, help="--source redis: events per read (1000)"),
    checkpoint_every: Optional[int] = typer.Option(None, min=1, help="batches (redis: reads) between "
                                                   "checkpoints (default 200)"),
    strategies: Optional[str] = typer.Option(None, help="comma-separated (default all six)"),
    publish_every: int = typer.Option(3600, min=1, help="seconds of event time between published bundles"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="samples per mini-batch (default 256)"),
    ingest_latency: Optional[float] = typer.Option(None, min=0, help="seconds from an item's created_at to "
                                                   "its representation being readable (default 1)"),
    freshness: bool = typer.Option(False, "--freshness", help="then write RUN/ctr/follow/freshness.{json,md} "
                                   "(representation delays, publish intervals, the batch model)"),
    seeds: int = typer.Option(3, min=1, help="--freshness: seeds"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
    config: Optional[Path] = _CONFIG,
    device: Optional[str] = _DEVICE,
) -> None:
    """Near-line training: one pass over the sample stream in event time for every strategy, each batch
    scored by the last published model before it is trained on; bundles under RUN/ctr/follow/bundles/,
    RUN/ctr/follow-<strategy> the newest; resumes from RUN/ctr/follow/checkpoint.json."""
    from mmrank.ctr.follow import FollowConfig, follow, freshness_table

    strats = _strategies(strategies)
    s = _settings(config, threads=threads)
    hw = _hardware(config, device)
    _threads(s.threads)
    flags = {k: v for k, v in dict(strategies=strats, source=source, publish_every=publish_every,
                                   batch_size=batch_size, ingest_latency=ingest_latency, redis_url=redis,
                                   stream=stream, idle_stop_s=idle_stop_s, batch_events=batch_events,
                                   checkpoint_every=checkpoint_every).items() if v is not None}
    cfg = FollowConfig(model=s.model, train=s.train, **flags)
    res = follow(run, cfg, hardware=hw)
    from mmrank.device import describe, resolve_device

    typer.echo(json.dumps({"samples": int(res.trained.sum()), "publishes": res.publishes,
                           "device": describe(resolve_device(hw.device)),
                           "samples_per_s": round(res.samples_per_s, 1),
                           "bundles": {x: str(run / "ctr" / f"follow-{x}") for x in cfg.strategies}}))
    if freshness:
        freshness_table(run, seeds=seeds, model=s.model, train=s.train, hardware=hw)
        typer.echo((run / "ctr" / "follow" / "freshness.md").read_text())
