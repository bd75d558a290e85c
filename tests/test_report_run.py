"""`mmrank report --run R` carries the data profile (issue 29 item 4): its warnings beside the source
line (results.md and report.html) and its key figures in the data section (results.json)."""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from mmrank.testing.presets import FIXTURES

sys.path.insert(0, str(FIXTURES))
from hm_like import PHOTO_SIZE, make_hm_like, photographed  # noqa: E402


def _cli(*args: object) -> str:
    from mmrank.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def test_report_carries_the_profile(tmp_path: Path) -> None:
    root = make_hm_like(tmp_path / "src")
    run = tmp_path / "run"
    _cli("data", "import", "--run", run, "--preset", "hm", "--items", root / "articles.parquet",
         "--events", root / "transactions_train.csv", "--images", root / "images")
    prof = json.loads((run / "data" / "profile.json").read_text())
    assert prof["warnings"]  # the fixture is small: at least the test-pair warning
    _cli("report", "--run", run)
    res = json.loads((run / "report" / "results.json").read_text())
    assert res["profile_warnings"] == prof["warnings"]
    fig = res["stages"]["data"]["profile"]
    assert fig["items"] == 200 and fig["with_photo"] == len(photographed())
    assert fig["photo_side_median"] == max(PHOTO_SIZE)
    assert fig["pairs_test"] == prof["pairs"]["test"] < 500
    assert fig["buyers_with_one_purchase"] == prof["events"]["purchases_per_user"]["share_with_one"]
    md = (run / "report" / "results.md").read_text()
    page = (run / "report" / "report.html").read_text()
    for w in prof["warnings"]:
        assert f"- **warning**: {w}" in md
        assert f"<b>warning</b>: {html.escape(w)}" in page
    assert f"pre-training pairs: {prof['pairs']['train']} train, {prof['pairs']['test']} test" in md
    assert "profile.pairs_test" in page


def test_report_without_a_profile_says_nothing_of_one(tiny_market: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_market, run)
    _cli("report", "--run", run)
    res = json.loads((run / "report" / "results.json").read_text())
    assert "profile" not in res["stages"]["data"] and "profile_warnings" not in res
    assert "warning" not in (run / "report" / "results.md").read_text()
