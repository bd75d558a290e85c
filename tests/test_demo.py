"""`mmrank demo` end to end on the tiny market, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_tiny_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "mmrank.cli", "demo", "--run", str(out), "--size", "tiny"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["simulated"] is True
    assert abs(results["stages"]["market"]["counts"]["impressions"] - 60_000) < 3_000  # after burn-in
    md = (out / "report" / "results.md").read_text()
    assert "simulated" in md and "oracle_auc" in md
    assert list(results["stages"]) == ["market", "pretrain", "store", "ctr", "rerank"]
    for stage in ("pretrain", "store", "ctr", "rerank"):
        assert results["stages"][stage]["seconds"] > 0, results["stages"][stage]
    assert (out / "report" / "report.html").exists()
