"""`mmrank posttrain --run R`: adapt the pre-trained item vectors to behaviour before the CTR cutoff.
A thin shell over :func:`mmrank.posttrain.stage.run_posttrain`; ``--config`` is a flat
:class:`PosttrainConfig` YAML, the flags given override it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mmrank.device import DEVICE_HELP


def posttrain(
    run: Path = typer.Option(..., "--run", help="run directory (reads R/data events before the CTR cutoff, "
                             "R/embeddings or R/encoder; writes R/posttrain)"),
    objective: Optional[str] = typer.Option(None, help="session | next | both (default both)"),
    epochs: Optional[int] = typer.Option(None, min=1, help="default 3"),
    batch_size: Optional[int] = typer.Option(None, min=2, help="pairs per step and objective (default 512)"),
    session_gap: Optional[int] = typer.Option(None, "--session-gap", min=1,
                                              help="seconds between clicks that start a new session (1800)"),
    max_pairs: Optional[int] = typer.Option(None, min=1, help="the latest N pairs per objective"),
    seed: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
    config: Optional[Path] = typer.Option(None, "--config", help="a PosttrainConfig YAML; flags override it"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Post-train the item representations (InfoNCE on session co-clicks and next clicks) into
    RUN/posttrain/, an embedding table the CTR strategies post and post+simtier+make read."""
    from mmrank.config import build, read_mapping
    from mmrank.posttrain.config import PosttrainConfig
    from mmrank.posttrain.stage import run_posttrain
    from mmrank.threads import configure

    base = read_mapping(config) if config is not None else {}
    flags = dict(objective=objective, epochs=epochs, batch_size=batch_size, session_gap_s=session_gap,
                 max_pairs=max_pairs, seed=seed)
    cfg = build(PosttrainConfig, {**base, **{k: v for k, v in flags.items() if v is not None}},
                str(config) if config else "posttrain flags")
    from mmrank.run_config import hardware_config

    # --config here is a flat PosttrainConfig, not a run config; a device this machine lacks: one line, now
    hw = hardware_config(None, device=device)
    configure(threads or None)
    s = run_posttrain(run, cfg, hardware=hw)
    typer.echo(json.dumps({k: s[k] for k in ("version", "representations", "cutoff_ts", "items", "clicks",
                                             "pairs", "before", "after", "seconds", "device")}))
