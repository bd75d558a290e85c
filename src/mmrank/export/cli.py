"""`mmrank export`: the run's towers and CTR models as ONNX graphs (a shell over :mod:`mmrank.export.stage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export(run: Path = typer.Option(..., "--run", help="run directory (reads RUN/encoder, RUN/ctr/<strategy>)"),
           fmt: str = typer.Option("onnx", "--format", help="onnx (the only format)"),
           strategies: Optional[str] = typer.Option(None, help="comma-separated CTR strategies (default: every "
                                                    "trained one)")) -> None:
    """Export to RUN/export/<format>/ and check every graph against PyTorch with ONNX Runtime."""
    from mmrank.export.stage import export_run

    wanted = None if strategies is None else [s.strip() for s in strategies.split(",") if s.strip()]
    manifest = export_run(run, fmt, wanted)
    for name, entry in manifest["files"].items():
        ins = ", ".join(i["name"] for i in entry["inputs"])
        typer.echo(f"{name}: inputs {ins}; max |onnx - torch| {entry['max_abs_diff']:.2e}")
    typer.echo(f"-> {run}/export/{fmt}/ (manifest.json; tolerance {manifest['tolerance']:g})")
