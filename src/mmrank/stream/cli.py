"""`mmrank stream produce` and `mmrank stream join`: thin shells over :mod:`mmrank.stream.sources` and
:func:`mmrank.stream.stage.join_run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import MMRankError

app = typer.Typer(no_args_is_help=True, help="The event stream (replay or Redis Streams) and the online "
                                             "joiner that turns it into CTR samples.")


_DEVICE = typer.Option(None, "--device", help=DEVICE_HELP + "; the stream runs no torch model (a "
                       "host-side join): the device is only checked")


def _check_device(device: Optional[str]) -> None:
    """Resolve ``--device`` (with the run config's default) at once: one line, exit 2, for a device
    this machine lacks."""
    from mmrank.run_config import hardware_config

    hardware_config(None, device=device)


def _event_time(ts: int | None) -> str:
    """Seconds as days+hh:mm:ss (the market's clock starts at 0; a Unix time reads as its date)."""
    if ts is None:
        return "-"
    if ts > 10**9:
        import datetime as dt

        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    d, r = divmod(int(ts), 86400)
    return f"day {d} {r // 3600:02d}:{r % 3600 // 60:02d}:{r % 60:02d}"


@app.command("produce")
def produce_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/data/events.parquet, items.parquet)"),
    redis: str = typer.Option(..., "--redis", help="redis://host:port/db"),
    stream: Optional[str] = typer.Option(None, "--stream", help="stream key (default mmrank:events:<run name>)"),
    arrivals: bool = typer.Option(True, "--arrivals/--no-arrivals", help="add item_arrival events"),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="put at most this many events"),
    device: Optional[str] = _DEVICE,
) -> None:
    """Put a run's events (and item arrivals) on a Redis stream, in timestamp order (XADD)."""
    from mmrank.stream.sources import produce

    _check_device(device)

    out = produce(run, redis, stream, arrivals=arrivals, limit=limit)
    typer.echo(f"produced {out['events']} events to {out['stream']} in {out['seconds']} s "
               f"({out['events_per_s']} events/s)")


@app.command("join")
def join_cmd(
    run: Path = typer.Option(..., "--run", help="run directory"),
    source: str = typer.Option("replay", "--source", help="replay (the run's events, no server) | redis"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the samples here (Parquet)"),
    redis: Optional[str] = typer.Option(None, "--redis", help="redis://host:port/db (source redis)"),
    stream: Optional[str] = typer.Option(None, "--stream", help="stream key (default mmrank:events:<run name>)"),
    group: Optional[str] = typer.Option(None, "--group", help="consumer group (default mmrank)"),
    consumer: Optional[str] = typer.Option(None, "--consumer", help="consumer name (default joiner)"),
    window_s: Optional[int] = typer.Option(None, "--window-s", min=0, help="attribution window (default 1800)"),
    batch_events: Optional[int] = typer.Option(None, "--batch-events", min=1, help="events per read (default 4096)"),
    idle_stop_s: Optional[float] = typer.Option(None, "--idle-stop-s", min=0.0,
                                                help="redis: stop when no entry came for this long (default 2)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress line"),
    device: Optional[str] = _DEVICE,
) -> None:
    """Join the run's event stream into CTR samples (the batch samples' columns plus event_id), with a
    progress line (event time, lag, events/s); prints the counts, bad input included, as JSON."""
    from mmrank.stream.config import StreamConfig
    from mmrank.stream.stage import join_run

    _check_device(device)
    if source not in ("replay", "redis"):
        raise MMRankError(f"--source: expected replay or redis, got {source!r}")
    flags = dict(source=source, redis_url=redis, stream=stream, group=group, consumer=consumer,
                 window_s=window_s, batch_events=batch_events, idle_stop_s=idle_stop_s)
    cfg = StreamConfig(**{k: v for k, v in flags.items() if v is not None})
    if quiet:
        stats = join_run(run, cfg, out)
    else:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status("joining") as status:
            def progress(p: dict[str, Any]) -> None:
                lag = "?" if p["lag"] is None else f"{p['lag']:,}"
                status.update(f"event time {_event_time(p['event_ts'])}  lag {lag} events  "
                              f"{p['events_per_s']:,.0f} events/s  {p['samples']:,} samples  {p['bad']} bad")

            stats = join_run(run, cfg, out, progress=progress)
    if out is not None:
        typer.echo(f"wrote {out}: {stats.get('samples', 0)} samples", err=True)
    typer.echo(json.dumps({k: v for k, v in stats.items() if k != "bad_examples"}, indent=1))
