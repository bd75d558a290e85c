"""The `mmrank` command line: one command per stage, each a thin shell over one Python function.

Errors a user can act on (bad data, bad config) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mmrank.data.schemas import HISTORY_LEN
from mmrank.errors import MMRankError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mmrank: multimodal item representations for e-commerce ranking.")
market_app = typer.Typer(no_args_is_help=True, help="The synthetic market (the embedded default data).")
data_app = typer.Typer(no_args_is_help=True, help="Bring your own data: validate tables, build derived ones.")
app.add_typer(market_app, name="market")
app.add_typer(data_app, name="data")


config_app = typer.Typer(no_args_is_help=True, help="The run config: every setting of every stage.")
app.add_typer(config_app, name="config")

_CONFIG = typer.Option(None, "--config", help="a run config YAML (see `mmrank config init`); flags override it")


@market_app.command("generate")
def market_generate(
    run: Path = typer.Option(..., "--run", help="run directory; tables go to RUN/data/"),
    catalog: Optional[Path] = typer.Option(None, help="a real catalog (Parquet); behaviour is simulated"),
    size: str = typer.Option("default", help="tiny | small | default (sets items/users/impressions)"),
    items: Optional[int] = typer.Option(None, help="number of items (synthetic) or catalog subset"),
    users: Optional[int] = typer.Option(None),
    impressions: Optional[int] = typer.Option(None),
    regions: Optional[int] = typer.Option(None),
    days: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None, help="seed (default 0)"),
    config: Optional[Path] = _CONFIG,
) -> None:
    """Generate items, users, events and ground truth (and the derived tables) under RUN/data/."""
    from mmrank.run_config import file_section
    from mmrank.data.market import generate_market, market_config

    flags = dict(n_items=items, n_users=users, n_impressions=impressions, n_regions=regions, n_days=days,
                 seed=seed, catalog=str(catalog) if catalog else None)
    cfg = market_config(size=size, **{**file_section(config, "market"),
                                      **{k: v for k, v in flags.items() if v is not None}})
    manifest = generate_market(cfg, run)
    typer.echo(f"wrote {run}/data: {manifest['counts']} oracle_auc={manifest['oracle_auc']:.4f}")


@data_app.command("validate")
def market_validate(path: Path = typer.Argument(..., help="an items or events Parquet file"),
                    kind: str = typer.Option("items", help="items | events"),
                    items: Optional[Path] = typer.Option(None, help="items file (for events)")) -> None:
    """Validate a table; bad input prints one line naming file, row and column."""
    from mmrank.data.io import validate_events, validate_items

    if kind == "items":
        ids = validate_items(path)
        typer.echo(f"{path}: {len(ids)} items OK")
    elif kind == "events":
        if items is None:
            raise MMRankError("--items is required to validate events")
        n = validate_events(path, validate_items(items, check_images=False))
        typer.echo(f"{path}: {n} events OK")
    else:
        raise MMRankError(f"--kind: expected items or events, got {kind!r}")


@data_app.command("build")
def data_build(run: Path = typer.Option(..., "--run", help="run directory with data/items.parquet and data/events.parquet"),
               split_ts: Optional[int] = typer.Option(None, help="train/test boundary (seconds): earlier is train"),
               history_len: Optional[int] = typer.Option(None, help=f"at most L clicks per behaviour sequence (default {HISTORY_LEN})"),
               start_ts: Optional[int] = typer.Option(None, help="earlier events feed histories and sales only "
                                                      "(default 0)"),
               config: Optional[Path] = _CONFIG) -> None:
    """Validate a team's items and events, then build pairs, CTR samples and lists beside them."""
    from mmrank.config import record
    from mmrank.run_config import stage_config
    from mmrank.data.samples import build_derived

    cfg = stage_config("data", config, {"split_ts": split_ts, "history_len": history_len, "start_ts": start_ts})
    if cfg.split_ts is None:
        raise MMRankError("data build: give --split-ts (or data.split_ts in --config)")
    counts = build_derived(run, cfg.split_ts, cfg.history_len, cfg.start_ts)
    record(run, "data", cfg)
    typer.echo(f"wrote {run}/data: {counts}")


@data_app.command("import")
def data_import(
    run: Path = typer.Option(..., "--run", help="run directory to create: RUN/data/"),
    items: Optional[Path] = typer.Option(None, "--items", help="catalog: Parquet, CSV or JSON Lines"),
    events: Path = typer.Option(..., "--events", help="behaviour log (a file, or the preset's folder)"),
    images: Optional[Path] = typer.Option(None, "--images", help="folder of photos named by item id"),
    queries: Optional[Path] = typer.Option(None, "--queries", help="query photos: a folder, or Parquet "
                                           "(query_image, image)"),
    mapping: Optional[Path] = typer.Option(None, "--mapping", help="YAML column mapping (see the README)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="taobao | ali-ccp | alimama | aliexpress | "
                                         "amazon | hm"),
    split_ts: Optional[int] = typer.Option(None, "--split-ts", help="train/test boundary (seconds)"),
    negatives: Optional[int] = typer.Option(None, "--negatives", help="sampled negatives per interaction "
                                            "(logs without impressions; default 4)"),
    replace: bool = typer.Option(False, "--replace", help="replace RUN/data if it exists"),
    config: Optional[Path] = _CONFIG,
) -> None:
    """Import a catalog and logs (checked row by row) into RUN/data/, then build the derived tables.

    Writes to a temporary directory and moves it into place at the end: a failed import leaves RUN as
    it was."""
    from mmrank.run_config import stage_config
    from mmrank.data.importer import format_summary, import_data

    cfg = stage_config("data", config, {"split_ts": split_ts, "negatives_per_positive": negatives})
    summary = import_data(run, items=items, events=events, images=images, queries=queries,
                          mapping=mapping, preset=preset, cfg=cfg, replace=replace, progress=True)
    typer.echo(format_summary(summary))
    typer.echo(f"wrote {run}/data")


@config_app.command("show")
def config_show(run: Optional[Path] = typer.Option(None, "--run", help="show what RUN/config.yaml recorded "
                                                   "(defaults for stages not run yet)"),
                config: Optional[Path] = typer.Option(None, "--config", help="a run config file to apply "
                                                      "on top"),
                plain: bool = typer.Option(False, "--plain", help="YAML without comments")) -> None:
    """Print every setting of every stage: defaults, then RUN/config.yaml, then --config."""
    from mmrank.run_config import load_run_config, render_run_config

    typer.echo(render_run_config(load_run_config(config, run), comments=not plain), nl=False)


@config_app.command("init")
def config_init(out: Optional[Path] = typer.Option(None, "--out", help="file to write (default: print)"),
                force: bool = typer.Option(False, "--force", help="overwrite OUT")) -> None:
    """Write a commented default run config (every section, every setting, with what it does)."""
    from mmrank.run_config import load_run_config, render_run_config

    text = render_run_config(load_run_config())
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists() and not force:
        raise MMRankError(f"{out}: exists (pass --force to overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    typer.echo(f"wrote {out}")


@app.command("demo")
def demo(run: Path = typer.Option(Path("runs/demo"), "--run", help="run directory"),
         size: str = typer.Option("small", help="tiny | small | default")) -> None:
    """Run every stage on the embedded default; writes RUN/report/results.json, results.md, report.html."""
    from mmrank.demo import run_demo

    run_demo(run, size)


# Stage commands, registered statically: each lives beside its stage as a thin shell.
from mmrank.ctr.cli import app as _ctr_app  # noqa: E402
from mmrank.pretrain.cli import app as _pretrain_app  # noqa: E402
from mmrank.report.cli import app as _report_app  # noqa: E402
from mmrank.rerank.cli import app as _rerank_app  # noqa: E402
from mmrank.serve.cli import serve as _serve  # noqa: E402
from mmrank.store.cli import embed as _embed, search as _search  # noqa: E402

app.add_typer(_pretrain_app, name="pretrain")
app.add_typer(_ctr_app, name="ctr")
app.add_typer(_rerank_app, name="rerank")
app.add_typer(_report_app, name="report")
app.command("embed")(_embed)
app.command("search")(_search)
app.command("serve")(_serve)


def main() -> None:
    try:
        app(standalone_mode=True)
    except MMRankError as err:
        # One plain line (no rich wrapping), whatever the terminal width.
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
