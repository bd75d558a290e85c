"""`mmrank report`: a run's report (``mmrank report --run R``) and the docs' generated tables
(``mmrank report docs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                  help="Reports: a run's results page (--run R), and the docs' tables (docs).")


@app.callback()
def report(ctx: typer.Context,
           run: Optional[Path] = typer.Option(None, "--run", help="run directory")) -> None:
    """Collect what every stage of RUN produced into RUN/report/ (results.md, results.json, report.html)."""
    if ctx.invoked_subcommand is not None:
        if run is not None:
            raise typer.BadParameter("--run goes after the subcommand (mmrank report docs --run ...)")
        return
    if run is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from mmrank.report.run import write_report

    res = write_report(run)
    typer.echo(res["source"])
    for k, v in res["substitutes"].items():
        typer.echo(f"substitute ({k}): {v}")
    typer.echo(f"wrote {run}/report/results.md, results.json, report.html")


@app.command("docs")
def docs(run: list[str] = typer.Option([], "--run", help="LABEL=R: copy R's results JSON to "
                                        "docs/results/LABEL/ (a-z, 0-9, - and _; docs/runs.md lists the labels in use)"),
         bench: list[str] = typer.Option([], "--bench", help="NAME=FILE: copy a benchmark's JSON to "
                                         "docs/results/bench/NAME.json (e.g. cold_start=out.json)"),
         root: Path = typer.Option(Path("."), "--root", help="repository root (README.md, docs/)")) -> None:
    """Render the result tables of README.md and docs/*.md from docs/results/ (after copying --run/--bench)."""
    from mmrank.report.docs import write_docs

    out = write_docs(root, run, bench)
    for label, files in out["copied"].items():
        typer.echo(f"copied {label}: {', '.join(files)}")
    typer.echo(f"runs in docs/results: {', '.join(out['runs']) or 'none'}")
    typer.echo("rewrote " + (", ".join(out["changed"]) if out["changed"] else "nothing (every page was current)"))
