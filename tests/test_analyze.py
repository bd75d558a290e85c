"""MOON's analyses (issue 21): the statistics on synthetic inputs with a known answer, resumable
points, and both commands end to end on a micro market (cnn-small + hash-bow, tiny CTR models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmrank.analyze.fit import (best_metric, exchange_rate, fit_power_law, saturation, spearman,
                                try_power_law)
from mmrank.analyze.points import PointBook
from mmrank.errors import MMRankError


# ---- statistics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_law_recovers_a_known_exponent_from_noisy_points(seed):
    rng = np.random.default_rng(seed)
    x = np.geomspace(100, 100_000, 8)
    y = 0.02 * x ** 0.35 * np.exp(rng.normal(0, 0.05, len(x)))  # 5% multiplicative noise
    fit = fit_power_law(x, y, n_boot=2000, seed=0)
    lo, hi = fit["ci"]
    assert lo < 0.35 < hi
    assert hi - lo < 0.1  # the interval is informative, not just wide
    assert fit["exponent"] == pytest.approx(0.35, abs=0.05)
    assert fit["a"] == pytest.approx(0.02, rel=0.5)
    # deterministic: the same inputs give the same interval
    assert fit_power_law(x, y, n_boot=2000, seed=0)["ci"] == fit["ci"]


def test_power_law_is_exact_without_noise_and_refuses_non_positive_values():
    x = np.array([1.0, 2, 4, 8])
    fit = fit_power_law(x, 3 * x ** -0.5)
    assert fit["exponent"] == pytest.approx(-0.5) and fit["a"] == pytest.approx(3)
    assert fit["ci"] == pytest.approx([-0.5, -0.5]) and fit["r2"] == pytest.approx(1.0)
    with pytest.raises(MMRankError, match="positive"):
        fit_power_law(x, np.array([0.1, -0.2, 0.3, 0.4]))
    assert try_power_law(x, np.array([0.1, -0.2, 0.3, 0.4]))["exponent"] is None


def test_exchange_rate_slope_interval_and_rank_correlation_on_synthetic_checkpoints():
    rng = np.random.default_rng(0)
    acc = np.linspace(0.10, 0.40, 10)                      # 10 checkpoints of rising Acc@1
    gain = 0.05 * acc + rng.normal(0, 0.001, len(acc))     # 0.05 GAUC per unit of Acc@1
    unrelated = rng.permutation(np.linspace(0.3, 0.6, 10))
    r = exchange_rate(acc, gain, n_boot=2000, seed=0)
    assert r["slope"] == pytest.approx(0.05, abs=0.01)
    assert r["ci"][0] < 0.05 < r["ci"][1] and r["ci"][0] > 0
    assert r["spearman"] > 0.9
    u = exchange_rate(unrelated, gain, n_boot=2000, seed=0)
    assert u["ci"][0] < 0 < u["ci"][1]                     # no exchange rate: the interval holds 0
    best, rule = best_metric({"acc@1.image": r, "acc@5.text": u})
    assert best == "acc@1.image" and "interval above 0" in rule
    # a metric that ranks checkpoints the other way round has a negative slope and rank correlation
    n = exchange_rate(-acc, gain, n_boot=500, seed=0)
    assert n["slope"] < 0 and n["spearman"] < -0.9
    # none qualifies: the largest rank correlation, and the rule says so
    best, rule = best_metric({"a": u, "b": n})
    assert best == "a" and "weak evidence" in rule


def test_spearman_against_a_hand_worked_case():
    # ranks x: 1 2 3 4 5, y: 2 1 4 3 5 -> d^2 = 1+1+1+1+0 = 4, rho = 1 - 6*4/(5*24) = 0.8
    assert spearman(np.array([1, 2, 3, 4, 5]), np.array([20, 10, 40, 30, 50])) == pytest.approx(0.8)
    assert spearman(np.array([1, 2, 3]), np.array([5, 5, 5])) is None


def test_saturation_is_the_first_point_after_which_doublings_stop_paying():
    x = np.array([1.0, 2, 4, 8, 16])
    y = np.array([0.10, 0.20, 0.25, 0.255, 0.256])     # per doubling: .10 .05 .005 .001
    s = saturation(x, y, threshold=0.01)
    assert s["x"] == 4.0 and s["gain_per_doubling"] == pytest.approx([0.10, 0.05, 0.005, 0.001])
    assert saturation(x, np.array([0.1, 0.2, 0.3, 0.4, 0.5]), 0.01)["x"] is None  # still rising
    # a late jump un-saturates the earlier plateau
    assert saturation(x, np.array([0.1, 0.1, 0.1, 0.1, 0.3]), 0.01)["x"] is None
    # two points at one x (a run's full pairs and another market of that size) are averaged
    s = saturation(np.array([1.0, 2, 2]), np.array([0.1, 0.2, 0.4]), 0.01)
    assert s["gain_per_doubling"] == pytest.approx([0.2]) and s["x"] is None


# ---- resumable points ------------------------------------------------------------------------------
def test_a_run_killed_after_its_first_point_does_not_recompute_it(tmp_path):
    calls: list[str] = []

    def compute(name: str, fail: bool = False):
        def f():
            calls.append(name)
            if fail:
                raise RuntimeError("killed")
            return {"value": len(name)}
        return f

    book = PointBook(tmp_path)
    book.get("p1", {"k": 1}, compute("p1"))
    with pytest.raises(RuntimeError):
        book.get("p2", {"k": 2}, compute("p2", fail=True))
    assert not (tmp_path / "points" / "p2.json").exists()   # a failed point leaves no file
    assert not list((tmp_path / "points").glob(".*tmp"))     # nor a temporary one
    mtime = (tmp_path / "points" / "p1.json").stat().st_mtime_ns
    again = PointBook(tmp_path)
    assert again.get("p1", {"k": 1}, compute("p1")) == {"value": 2}
    again.get("p2", {"k": 2}, compute("p2"))
    assert calls == ["p1", "p2", "p2"] and again.reused == ["p1"] and again.computed == ["p2"]
    assert (tmp_path / "points" / "p1.json").stat().st_mtime_ns == mtime
    # other settings: the point is computed again
    PointBook(tmp_path).get("p1", {"k": 99}, compute("p1"))
    assert calls[-1] == "p1"
    with pytest.raises(MMRankError, match="point name"):
        book.path("a/b")


# ---- end to end on a micro market ------------------------------------------------------------------
@pytest.fixture(scope="module")
def analysis_market(tmp_path_factory) -> Path:
    """A micro market with tiny pre-training and CTR settings recorded in its config.yaml, and the
    backbone features cached under R/features (built once; each test works on a copy)."""
    from mmrank.analyze.bench import Bench
    from mmrank.analyze.config import AnalyzeConfig
    from mmrank.config import record
    from mmrank.ctr.config import CtrStageConfig
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.testing.markets import micro_market

    run = micro_market(tmp_path_factory.mktemp("analyze") / "run", seed=2)
    record(run, "pretrain", PretrainConfig(image_encoder="cnn-small", text_encoder="hash-bow", image_size=32,
                                           epochs=2, batch_size=32, queue_size=64, dim=16, nested_dims=[8, 16],
                                           hidden=32, warmup_steps=2))
    record(run, "ctr", CtrStageConfig.model_validate(
        {"make_epochs": 1, "model": {"emb_dim": 4, "att_hidden": [8], "mlp_hidden": [8], "n_tiers": 4,
                                     "make": {"proj_dim": 4, "att_hidden": [8], "mlp_hidden": [8, 8, 4]}},
         "train": {"batch_size": 256}}))
    Bench(run, AnalyzeConfig(), with_ctr=False)  # fills R/features
    return run


@pytest.fixture()
def one_thread():
    import torch

    was = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared machine
    yield
    torch.set_num_threads(was)


def _tiny_run(market: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(market, dst)
    return dst


def test_exchange_rate_end_to_end_resumes_after_a_failure(analysis_market, tmp_path, monkeypatch, one_thread):
    from mmrank.analyze.bench import Bench
    from mmrank.analyze.config import AnalyzeConfig
    from mmrank.analyze.exchange import exchange_rate_analysis

    run = _tiny_run(analysis_market, tmp_path / "run")
    cfg = AnalyzeConfig(points=["scl@e1", "scl@d8", "clip-e@e1"], n_boot=200, max_train_rows=3000)
    real = Bench.downstream
    calls: list[str] = []

    def counted(self, strategy, seed, vectors=None, source="", history_len=None):
        calls.append(source or strategy)
        if len(calls) == 3 and fail[0]:                       # id, scl@e1, then the next point dies
            raise RuntimeError("killed")
        return real(self, strategy, seed, vectors, source, history_len)

    fail = [True]
    monkeypatch.setattr(Bench, "downstream", counted)
    with pytest.raises(RuntimeError, match="killed"):
        exchange_rate_analysis(run, cfg)
    pts = run / "analysis" / "exchange_rate" / "points"
    assert sorted(p.name for p in pts.glob("*.json")) == ["id-seed0.json", "scl@e1.json"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in pts.glob("*.json")}
    fail[0] = False
    calls.clear()
    r = exchange_rate_analysis(run, cfg)
    assert "analysis:scl@e1" not in calls and "id" not in calls     # not recomputed
    assert r["reused"] == ["id-seed0", "scl@e1"] and r["computed"] == ["scl@d8", "clip-e@e1"]
    assert {p.name: p.stat().st_mtime_ns for p in pts.glob("*.json") if p.name in mtimes} == mtimes
    assert [p["checkpoint"] for p in r["checkpoints"]] == cfg.points
    saved = json.loads((run / "analysis" / "exchange_rate.json").read_text())
    # a metric with one value over the checkpoints has no slope (the micro market has few test pairs)
    varied = {m for m in ("acc@1.image", "acc@1.text", "acc@5.image", "acc@5.text")
              if len({p["metrics"][m] for p in saved["checkpoints"]}) > 1}
    assert varied and set(saved["exchange_rates"]) == varied
    for e in saved["exchange_rates"].values():
        assert e["ci"][0] <= e["slope"] <= e["ci"][1] and e["n"] == 3
    assert saved["best_metric"] in saved["exchange_rates"] and saved["rule"]
    assert (run / "analysis" / "exchange_rate.png").stat().st_size > 10_000
    e1 = next(p for p in saved["checkpoints"] if p["checkpoint"] == "scl@e1")
    assert e1["gain"] == pytest.approx(e1["simtier+make"][0]["gauc"] - saved["id"]["0"]["gauc"])


def test_scaling_end_to_end(analysis_market, tmp_path, one_thread):
    from mmrank.analyze.config import AnalyzeConfig
    from mmrank.analyze.scaling import scaling_analysis

    run = _tiny_run(analysis_market, tmp_path / "run")
    # another market on the pairs axis: here a copy of the run itself, which must reproduce the
    # point of all its pairs (same settings, same seeds)
    other = _tiny_run(analysis_market, tmp_path / "other")
    cfg = AnalyzeConfig(fractions=[0.5, 1.0], queue_sizes=[32, 64], history_lens=[5, 20],
                        n_boot=200, pretrain_epochs=1, max_train_rows=3000, extra_runs=[str(other)])
    r = scaling_analysis(run, cfg)
    assert set(r["axes"]) == {"pairs", "K", "L"}
    pairs = r["axes"]["pairs"]["points"]
    assert [p["x"] for p in pairs] == sorted(p["x"] for p in pairs) and pairs[0]["x"] < pairs[-1]["x"]
    full = {p["name"]: p for p in pairs if p["x"] == pairs[-1]["x"]}
    assert set(full) == {"pairs-f1", "pairs-run0-other"}
    for k in ("acc@1.image", "acc@1.text", "gain", "id_gauc"):
        assert full["pairs-f1"][k] == pytest.approx(full["pairs-run0-other"][k])
    assert len(r["axes"]["pairs"]["points"]) == 3
    for axis, a in r["axes"].items():
        assert len(a["points"]) >= 2
        assert ("acc@1.image" in a["curves"]) == (axis != "L")
        for c in a["curves"].values():
            pl = c["power_law"]
            assert pl["exponent"] is None and pl["reason"] or \
                pl["ci"][0] - 1e-9 <= pl["exponent"] <= pl["ci"][1] + 1e-9
    # the L axis reuses one encoder: same accuracy at every L; the ID baseline is trained per L
    assert len({p["acc@1.image"] for p in r["axes"]["L"]["points"]}) == 1
    assert len({p["id_gauc"] for p in r["axes"]["L"]["points"]}) > 1
    assert (run / "analysis" / "scaling.png").exists()
    again = scaling_analysis(run, cfg)
    assert again["computed"] == [] and again["axes"] == json.loads(json.dumps(r["axes"]))


def test_bad_points_and_axes_are_one_line_errors(tmp_path):
    from mmrank.testing.presets import run_mmrank

    r = run_mmrank("analyze", "exchange-rate", "--run", tmp_path, "--points", "scl@x3,scl")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "bad modifier 'x3'" in errors[0]
    assert "Traceback" not in r.stderr
    r = run_mmrank("analyze", "exchange-rate", "--run", tmp_path, "--points", "scl")
    assert r.returncode == 2 and "need at least 2" in r.stderr
    r = run_mmrank("analyze", "scaling", "--run", tmp_path, "--history-lens", "5,80")
    assert r.returncode == 2 and "history_lens must lie in [1, 50]" in r.stderr
