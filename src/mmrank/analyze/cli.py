"""`mmrank analyze exchange-rate --run R` and `mmrank analyze scaling --run R`: thin shells over
:mod:`mmrank.analyze.exchange` and :mod:`mmrank.analyze.scaling`. The encoders and CTR models are
trained with the run's recorded ``pretrain`` / ``ctr`` settings; the flags set the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="MOON's analyses: the exchange rate of the pre-training "
                                             "metrics, and scaling (pairs, negatives K, behaviour length L).")

_RUN = typer.Option(..., "--run", help="run directory (reads R/data, R/pretrain, R/features; writes "
                    "R/analysis/)")
_SEEDS = typer.Option(None, "--seeds", min=1, help="CTR seeds per point (default 1)")
_MAKE = typer.Option(None, "--make-epochs", min=0, help="MAKE pre-training epochs (default: the run's)")
_ROWS = typer.Option(None, "--max-train-rows", min=1, help="CTR: train on the latest N training rows")
_EPOCHS = typer.Option(None, "--pretrain-epochs", min=1, help="epochs of the encoders trained here "
                       "(default: the run's pretrain.epochs)")
_THREADS = typer.Option(None, "--threads", min=1, help="torch threads (default: 1 when the machine is "
                        "busy, load average >= cores; else torch's default)")
_DEVICE = typer.Option(None, "--device", help=DEVICE_HELP + "; the encoders and CTR models are trained there")


def _hardware(device: Optional[str]):
    """The run config's hardware section with ``--device``, checked before any work."""
    from mmrank.run_config import hardware_config

    return hardware_config(None, device=device)


def _list(text: Optional[str], name: str, kind: type) -> Optional[list[Any]]:
    if text is None:
        return None
    try:
        out = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not out:
        raise ConfigError(f"{name}: empty list")
    return out


def _config(**flags: Any):
    from mmrank.analyze.config import AnalyzeConfig
    from mmrank.config import build

    return build(AnalyzeConfig, {k: v for k, v in flags.items() if v is not None}, "analyze flags")


def _threads(n: Optional[int]) -> None:
    """``--threads``, else one thread on a busy machine (mmrank.threads: spin-waiting threads are
    slower than one when the load average is at least the number of cores)."""
    from mmrank.threads import configure, machine_busy

    if n is None and machine_busy():
        typer.echo("machine busy (load average >= cores): 1 torch thread (--threads to override)", err=True)
        n = 1
    configure(n)


@app.command("exchange-rate")
def exchange_rate_cmd(
    run: Path = _RUN, seeds: Optional[int] = _SEEDS,
    points: Optional[str] = typer.Option(None, "--points", help="comma-separated checkpoints (default "
                                         "reuse,scl@e1,scl@d16): 'reuse' = every encoder under "
                                         "R/pretrain/; a variant; <variant>@eN (epochs) @dN (width) "
                                         "@kN (queue size) @fX (share of pairs)"),
    make_epochs: Optional[int] = _MAKE, max_train_rows: Optional[int] = _ROWS,
    pretrain_epochs: Optional[int] = _EPOCHS, threads: Optional[int] = _THREADS,
    device: Optional[str] = _DEVICE,
) -> None:
    """Intermediate metrics vs downstream gain over >= 5 encoder checkpoints: slope, bootstrap 95%
    interval and Spearman per metric, the best metric named -> R/analysis/exchange_rate.{json,png}."""
    from mmrank.analyze.exchange import exchange_rate_analysis

    hw = _hardware(device)
    _threads(threads)
    pts = None if points is None else [p.strip() for p in points.split(",") if p.strip()]
    cfg = _config(seeds=seeds, points=pts, make_epochs=make_epochs, max_train_rows=max_train_rows,
                  pretrain_epochs=pretrain_epochs)
    r = exchange_rate_analysis(run, cfg, hardware=hw)
    typer.echo(f"{len(r['checkpoints'])} checkpoints ({len(r['computed'])} computed, {len(r['reused'])} "
               f"read back), {r['seeds']} CTR seed(s); behaviour simulated")
    typer.echo("| checkpoint | acc@1 image | acc@1 text | acc@5 image | acc@5 text | GAUC gain vs id |")
    typer.echo("|---|---:|---:|---:|---:|---:|")
    for p in r["checkpoints"]:
        m = p["metrics"]
        cells = " | ".join(f"{m[k]:.4f}" if k in m else "—"
                           for k in ("acc@1.image", "acc@1.text", "acc@5.image", "acc@5.text"))
        typer.echo(f"| {p['checkpoint']} | {cells} | {p['gain']:+.4f} |")
    typer.echo("")
    typer.echo("| metric | slope (GAUC per unit) | bootstrap 95% interval | Spearman |")
    typer.echo("|---|---:|---:|---:|")
    for k, e in r["exchange_rates"].items():
        rho = "—" if e["spearman"] is None else f"{e['spearman']:.3f}"
        typer.echo(f"| {k} | {e['slope']:+.4f} | [{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}] | {rho} |")
    typer.echo(f"\nbest exchange rate: {r['best_metric']} ({r['rule']})")
    typer.echo(f"wrote {run}/analysis/exchange_rate.json, {r['plot']} ({r['seconds']} s)")


@app.command("scaling")
def scaling_cmd(
    run: Path = _RUN, seeds: Optional[int] = _SEEDS,
    fractions: Optional[str] = typer.Option(None, "--fractions", help="shares of the training pairs "
                                            "(default 0.125,0.25,0.5,1)"),
    queue_sizes: Optional[str] = typer.Option(None, "--queue-sizes", help="queue sizes K (default "
                                              "256,1024,4096,16384)"),
    history_lens: Optional[str] = typer.Option(None, "--history-lens", help="CTR behaviour lengths L "
                                               "(default 5,10,20,50)"),
    extra_run: Optional[list[Path]] = typer.Option(None, "--extra-run", help="another run (a larger "
                                                   "market) whose full pairs add a point to the pairs "
                                                   "axis; repeatable"),
    make_epochs: Optional[int] = _MAKE, max_train_rows: Optional[int] = _ROWS,
    pretrain_epochs: Optional[int] = _EPOCHS, threads: Optional[int] = _THREADS,
    device: Optional[str] = _DEVICE,
) -> None:
    """Acc@1 and downstream gain vs training pairs, queue size K and behaviour length L, with a power
    law per curve and its saturation point -> R/analysis/scaling.{json,png}."""
    from mmrank.analyze.scaling import scaling_analysis

    hw = _hardware(device)
    _threads(threads)
    cfg = _config(seeds=seeds, fractions=_list(fractions, "--fractions", float),
                  queue_sizes=_list(queue_sizes, "--queue-sizes", int),
                  history_lens=_list(history_lens, "--history-lens", int), make_epochs=make_epochs,
                  extra_runs=[str(p) for p in extra_run] if extra_run else None,
                  max_train_rows=max_train_rows, pretrain_epochs=pretrain_epochs)
    r = scaling_analysis(run, cfg, hardware=hw)
    typer.echo("| axis | curve | points | exponent b | 95% interval | saturates at |")
    typer.echo("|---|---|---:|---:|---:|---:|")
    for axis, a in r["axes"].items():
        for c, cur in a["curves"].items():
            pl, sat = cur["power_law"], cur["saturation"]["x"]
            b = "not fitted" if pl["exponent"] is None else f"{pl['exponent']:+.4f}"
            ci = "—" if pl["exponent"] is None else f"[{pl['ci'][0]:+.4f}, {pl['ci'][1]:+.4f}]"
            typer.echo(f"| {axis} | {c} | {len(a['points'])} | {b} | {ci} | "
                       f"{'not within range' if sat is None else f'{sat:g}'} |")
    typer.echo(f"\nsaturation: {r['saturation_rule']}")
    typer.echo(f"wrote {run}/analysis/scaling.json, {r['plot']} ({r['seconds']} s); behaviour simulated")
