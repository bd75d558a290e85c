"""`mmrank report`: a run's report (``mmrank report --run R``), the docs' generated tables
(``mmrank report docs``), and the sample filter against the market's truth (``mmrank report filter``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                  help="Reports: a run's results page (--run R), the docs' tables (docs), the "
                                       "sample filter against the truth (filter).")


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


@app.command("filter")
def filter_report_cmd(run: Path = typer.Option(..., "--run", help="run directory (a market with R/truth/)")) -> None:
    """Evaluation: the dynamic sample filter's precision (share of dropped pairs that are noise) and recall
    against the market's noisy pairs, per row and epoch, beside Acc@1 of each row ->
    R/pretrain/filter_report.json. Reads R/truth/ (training never does)."""
    from mmrank.report.filter import filter_report

    out = filter_report(run)

    def f(x) -> str:
        return "n/a" if x is None else f"{x:.3f}"
    typer.echo(f"noise share of the training pairs (R/truth/noisy_pairs.parquet): {f(out['noise_share'])}")
    typer.echo("| row | epoch | dropped | precision | recall |\n|---|---:|---:|---:|---:|")
    for row, r in out["rows"].items():
        for e in r["epochs"]:
            typer.echo(f"| {row} | {e['epoch']} | {e['dropped']} | {f(e['precision'])} | {f(e['recall'])} |")
        a = r["all"]
        typer.echo(f"| {row} | all | {a['dropped']} | {f(a['precision'])} | {f(a['recall'])} |")
    if out["acc@1"]:
        typer.echo("\n| row | Acc@1 image | Acc@1 text |\n|---|---:|---:|")
        for row, acc in out["acc@1"].items():
            cells = [f(acc[m]["mean"]) + ("" if acc[m]["std"] is None else f" ± {acc[m]['std']:.3f}")
                     for m in ("image", "text")]
            typer.echo(f"| {row} | {cells[0]} | {cells[1]} |")
    typer.echo(f"-> {run}/pretrain/filter_report.json")
