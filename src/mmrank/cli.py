"""The `mmrank` command line: one command per stage, each a thin shell over one Python function.

Errors a user can act on (bad data, bad config) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import DEVICE_HELP
from mmrank.errors import MMRankError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mmrank: multimodal item representations for e-commerce ranking.")
market_app = typer.Typer(no_args_is_help=True, help="The synthetic market (the embedded default data).")
app.add_typer(market_app, name="market")


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
         size: str = typer.Option("small", help="tiny | small | default"),
         device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP)) -> None:
    """Run every stage on the embedded default; writes RUN/report/results.json, results.md, report.html."""
    from mmrank.demo import run_demo
    from mmrank.run_config import hardware_config

    run_demo(run, size, hardware=hardware_config(None, device=device))


# Stage commands, registered statically: each lives beside its stage as a thin shell.
from mmrank.analyze.cli import app as analyze_app  # noqa: E402
from mmrank.creative.cli import app as creative_app  # noqa: E402
from mmrank.ctr.cli import app as ctr_app  # noqa: E402
from mmrank.data.cli import app as data_app  # noqa: E402
from mmrank.export.cli import export as export_command  # noqa: E402
from mmrank.posttrain.cli import posttrain as posttrain_command  # noqa: E402
from mmrank.pretrain.cli import app as pretrain_app  # noqa: E402
from mmrank.report.cli import app as report_app  # noqa: E402
from mmrank.rerank.cli import app as rerank_app  # noqa: E402
from mmrank.serve.cli import serve as serve_command  # noqa: E402
from mmrank.sid.cli import app as sid_app  # noqa: E402
from mmrank.store.cli import embed as embed_command, search as search_command  # noqa: E402
from mmrank.stream.cli import app as stream_app  # noqa: E402

app.add_typer(data_app, name="data")
app.add_typer(pretrain_app, name="pretrain")
app.command("posttrain")(posttrain_command)
app.add_typer(ctr_app, name="ctr")
app.add_typer(rerank_app, name="rerank")
app.add_typer(report_app, name="report")
app.add_typer(analyze_app, name="analyze")
app.add_typer(stream_app, name="stream")
app.add_typer(sid_app, name="sid")
app.add_typer(creative_app, name="creative")
app.command("embed")(embed_command)
app.command("search")(search_command)
app.command("serve")(serve_command)
app.command("export")(export_command)


def main() -> None:
    try:
        app(standalone_mode=True)
    except MMRankError as err:
        # One plain line (no rich wrapping), whatever the terminal width.
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
