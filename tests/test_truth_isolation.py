"""No training stage reads the market's truth: pre-training, embedding, CTR and re-ranking run with
R/truth/ gone, and no file under it is opened meanwhile (re-ranking then reports its evaluator
figures absent). The same holds for the off-policy estimators and the counterfactual learners on a
market logged by a stochastic policy: `rerank compare` estimates every order from the logs alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrank.testing.audit import opens_under


@pytest.mark.slow
def test_pretrain_embed_and_ctr_run_without_the_truth(tmp_path: Path) -> None:
    from mmrank.cli import app
    from mmrank.data.market import generate_market, market_config

    run = tmp_path / "run"
    # issue 20: with noisy pairs (flagged under truth/ only) and items missing a photo or a title
    generate_market(market_config(size="tiny", n_items=300, n_users=400, n_impressions=12_000, seed=3,
                                  noisy_pair_share=0.2, missing_image_share=0.1, missing_title_share=0.1),
                    run)
    hidden = tmp_path / "hidden-truth"
    assert (run / "truth" / "noisy_pairs.parquet").exists()
    shutil.move(run / "truth", hidden)  # unreadable because absent; and any open of it is recorded
    with opens_under(hidden) as opened:
        runner = CliRunner()
        for args in (["pretrain", "--run", str(run), "--image-encoder", "cnn-small", "--text-encoder",
                      "hash-bow", "--epochs", "1", "--batch-size", "64", "--queue-size", "256"],
                     ["embed", "--run", str(run), "--threads", "1"],
                     ["ctr", "train", "--run", str(run), "--strategy", "simtier", "--make-epochs", "0",
                      "--threads", "1"],
                     ["rerank", "train", "--run", str(run), "--model", "armmt", "--threads", "1"]):
            res = runner.invoke(app, args)
            assert res.exit_code == 0, (args[0], res.output, res.exception)
    assert not (run / "truth").exists()
    assert opened == []
    assert (run / "encoder" / "weights.safetensors").exists()
    assert (run / "ctr" / "simtier" / "metrics.json").exists()
    rerank = json.loads((run / "rerank" / "armmt" / "metrics.json").read_text())
    assert rerank["evaluator"].startswith("absent") and rerank["auc"]["purchase"] is not None


@pytest.mark.slow
def test_offpolicy_estimators_and_counterfactual_learners_run_without_the_truth(tmp_path: Path) -> None:
    from mmrank.cli import app
    from mmrank.data.market import generate_market, market_config

    run = tmp_path / "run"
    generate_market(market_config(size="tiny", n_items=300, n_users=400, n_impressions=12_000, seed=3,
                                  behaviour=dict(policy_temperature=0.5, policy_exploration=0.1,
                                                 policy_marginal_samples=16)), run)
    (run / "rerank").mkdir()
    (run / "rerank" / "encoder.json").write_text(json.dumps({"encoder": "tiny", "dim": 8}))
    hidden = tmp_path / "hidden-truth"
    shutil.move(run / "truth", hidden)
    with opens_under(hidden) as opened:
        res = CliRunner().invoke(app, ["rerank", "compare", "--run", str(run), "--seeds", "1", "--threads", "1",
                                       "--models", "logged,prod-order,dnn-ips,armmt-ips"])
        assert res.exit_code == 0, (res.output, res.exception)
    assert opened == []
    out = json.loads((run / "rerank" / "compare.json").read_text())
    assert out["meta"]["evaluator"].startswith("absent")
    for m in ("prod-order", "dnn-ips", "armmt-ips"):
        est = out["offpolicy"]["estimates"][m]
        assert all(est[e]["purchases"] is not None for e in ("ips", "snips", "dr", "pbm")), m
        assert out["offpolicy"]["truth"][m]["purchases"] is None
    assert out["offpolicy"]["logging"].startswith("stochastic")


def test_the_open_watch_records_an_open_under_its_root(tmp_path: Path) -> None:
    """The watch these tests rely on sees a read under its root (so an empty list means none), and
    nothing outside it or after the block."""
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "x.parquet").write_bytes(b"x")
    (tmp_path / "other.txt").write_text("y")
    with opens_under(tmp_path / "truth") as opened:
        (tmp_path / "truth" / "x.parquet").read_bytes()
        (tmp_path / "other.txt").read_text()
    (tmp_path / "truth" / "x.parquet").read_bytes()
    assert opened == [str(tmp_path / "truth" / "x.parquet")]
