"""`mmrank report docs`: the README's and docs/' tables are rendered from the runs' JSON, the committed
pages are what their committed JSON renders to, and a changed figure shows as a changed page."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrank.cli import app
from mmrank.errors import MMRankError
from mmrank.report.docs import BLOCKS, KNOWN_RUNS, pages, render_text, write_docs, Results

ROOT = Path(__file__).resolve().parents[1]


def _copy_docs(dest: Path, with_results: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "README.md", dest / "README.md")
    shutil.copytree(ROOT / "docs", dest / "docs",
                    ignore=None if with_results else shutil.ignore_patterns("results"))
    return dest


def _ok(args: list) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def _rows(text: str, name: str) -> list[list[str]]:
    """The cells of every Markdown table row whose first cell is ``name``."""
    return [[c.strip() for c in line.strip().strip("|").split("|")][1:]
            for line in text.splitlines() if re.match(rf"^\| {re.escape(name)} \|", line)]


def test_committed_pages_are_what_their_json_renders_to(tmp_path):
    """A figure typed by hand, or a page not regenerated after its JSON changed, fails here."""
    root = _copy_docs(tmp_path / "repo")
    out = write_docs(root)
    assert out["changed"] == [], f"stale pages (run `make docs`): {out['changed']}"
    for page in pages(ROOT):
        text = page.read_text()
        assert text.count("<!-- generated: ") == text.count("<!-- end generated -->"), page


def test_readme_is_short_and_every_block_key_is_known():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    used = set()
    for page in pages(ROOT):
        used |= set(re.findall(r"<!-- generated: ([a-z0-9-]+) -->", page.read_text()))
    assert used <= set(BLOCKS) and {"readme-pretrain", "readme-table3", "readme-rerank", "pretrain", "ctr",
                                    "rerank", "market", "cold-start", "runs", "serve-latency", "serve-load",
                                    "readme-offpolicy", "offpolicy-estimators", "offpolicy-learners"} <= used


# --------------------------------------------------------------------------------------------------
# a tiny run, through the real stages: market, pre-training comparison, CTR and re-ranking comparisons


@pytest.fixture(scope="module")
def tiny_compared_run(tiny_market, tmp_path_factory) -> Path:
    from mmrank.run_config import file_section
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.pretrain.stage import compare

    run = tmp_path_factory.mktemp("docs") / "run"
    shutil.copytree(tiny_market, run)
    cfg = run.parent / "cfg.yaml"
    cfg.write_text(
        "pretrain: {image_encoder: cnn-small, text_encoder: hash-bow, epochs: 1, batch_size: 64,\n"
        "           queue_size: 256, dim: 16, nested_dims: [8], hidden: 32}\n"
        "ctr:\n"
        "  model: {emb_dim: 8, att_hidden: [16, 8], mlp_hidden: [32, 16], n_tiers: 10, vector_dim: 8,\n"
        "          make: {proj_dim: 8, att_hidden: [16, 8], mlp_hidden: [32, 16, 8]}}\n"
        "  train: {batch_size: 512}\n"
        "rerank:\n"
        "  train: {batch_size: 64}\n")
    compare(run, PretrainConfig(**file_section(cfg, "pretrain")), variants=("popularity", "scl"), seeds=2)
    _ok(["ctr", "compare", "--run", run, "--config", cfg, "--seeds", 2, "--strategies", "id,simtier,make",
         "--make-epochs", 1, "--curve", "0,1", "--threads", 1])
    _ok(["rerank", "compare", "--run", run, "--config", cfg, "--seeds", 2, "--models", "logged,dnn",
         "--epochs", 1, "--threads", 1])
    return run


@pytest.mark.slow
def test_docs_tables_regenerate_from_a_tiny_run(tiny_compared_run, tmp_path):
    run = tiny_compared_run
    root = _copy_docs(tmp_path / "repo", with_results=False)
    out = _ok(["report", "docs", "--root", root, "--run", f"demo={run}", "--run", f"default={run}"])
    assert "copied demo: data/manifest.json, pretrain/compare.json" in out
    for label in ("demo", "default"):
        for rel in ("data/manifest.json", "pretrain/compare.json", "pretrain/compare_detail.json",
                    "ctr/compare.json", "rerank/compare.json"):
            assert (root / "docs" / "results" / label / rel).read_bytes() == (run / rel).read_bytes()

    ctr = json.loads((run / "ctr" / "compare.json").read_text())
    pre = json.loads((run / "pretrain" / "compare.json").read_text())
    detail = json.loads((run / "pretrain" / "compare_detail.json").read_text())
    rr = json.loads((run / "rerank" / "compare.json").read_text())
    man = json.loads((run / "data" / "manifest.json").read_text())
    readme = (root / "README.md").read_text()
    docs = {p.stem: p.read_text() for p in (root / "docs").glob("*.md")}

    # README: the demo's headline figures, four decimals, every model (its Table 3 is the larger markets')
    assert _rows(readme, "scl") == [[f"{pre['scl'][a][m]:.4f}" for a in ("acc@1", "acc@5")
                                     for m in ("image", "text")]]
    assert _rows(readme, "dnn")[0][0] == f"{rr['dnn']['auc']['purchase']['mean']:.4f}"
    assert f"{man['surfaces']['display']['oracle_auc']:.4f}" in readme

    # docs pages: mean ± std over the two seeds, one section per run label
    auc = ctr["simtier"]["auc"]
    main = [r[0] for r in _rows(docs["ctr"], "simtier")
            if not r[0].endswith("%") and len(r) == 8]   # not Figure 6b's rows, nor the exposure-bias ones
    assert main == [f"{auc['mean']:.4f} ± {auc['std']:.4f}"] * 2
    bias = [r for r in _rows(docs["ctr"], "simtier") if len(r) == 4]   # evaluation code's exposure bias
    ps = ctr["simtier"]["bias"]["partial_spearman"]
    assert [r[0] for r in bias] == [f"{ps['mean']:.3f} ± {ps['std']:.3f}"] * 2
    sd = detail["variants"]["scl"]["std"]["acc@1"]["image"]
    assert _rows(docs["pretrain"], "scl")[0][0] == f"{pre['scl']['acc@1']['image']:.4f} ± {sd:.4f}"
    cvr = rr["dnn"]["auc"]["purchase"]
    assert _rows(docs["rerank"], "dnn")[0][2] == f"{cvr['mean']:.4f} ± {cvr['std']:.4f}"
    assert _rows(docs["market"], "display")[0][0] == f"{man['surfaces']['display']['oracle_auc']:.4f}"
    assert "docs/results/demo/ctr/compare.json" in docs["ctr"]
    for label in set(KNOWN_RUNS) - {"demo", "default"}:          # absent runs say how to make them
        assert f"*No CTR comparison in `docs/results/{label}/`.*" in docs["ctr"]
        assert "git show 49d227b:README.md" in docs["ctr"]

    # rendering again from the copies changes nothing; a changed figure changes the pages
    assert write_docs(root)["changed"] == []
    copy = root / "docs" / "results" / "demo" / "ctr" / "compare.json"
    edited = json.loads(copy.read_text())
    edited["simtier"]["gauc"]["mean"] = 0.123456
    copy.write_text(json.dumps(edited))
    assert write_docs(root)["changed"] == [str(root / "docs" / "ctr.md")]
    assert "| 0.1235 ± " in (root / "docs" / "ctr.md").read_text()


def test_bad_arguments_are_one_line_errors(tmp_path):
    root = _copy_docs(tmp_path / "repo", with_results=False)
    for args, match in ((["--run", "no-equals-sign"], "expected LABEL=PATH"),
                        (["--run", f"x={tmp_path / 'absent'}"], "no such directory"),
                        (["--run", f"x={tmp_path}"], "none of data/manifest.json"),
                        (["--bench", f"cold_start={tmp_path / 'absent.json'}"], "no such file")):
        res = CliRunner().invoke(app, ["report", "docs", "--root", str(root), *args])
        assert res.exit_code != 0 and isinstance(res.exception, MMRankError), args
        assert match in str(res.exception)
    with pytest.raises(MMRankError, match="page.md: unknown generated block 'nope'"):
        render_text("<!-- generated: nope -->\n<!-- end generated -->\n", Results(tmp_path), "page.md")
    with pytest.raises(MMRankError, match="has no '<!-- end generated -->'"):
        render_text("<!-- generated: ctr -->\n", Results(tmp_path), "page.md")
    with pytest.raises(MMRankError, match="no such directory"):
        write_docs(tmp_path / "nowhere")


def test_cold_start_json_renders_with_its_ceilings(tmp_path):
    root = _copy_docs(tmp_path / "repo", with_results=False)
    cs = {"commit": "0123456789abcdef", "cpus": 2, "date": "2026-12-06T04:00:00Z",
          "phases": [{"phase": "install", "seconds": 70.2, "ceiling_s": None, "within": None, "returncode": 0},
                     {"phase": "test", "seconds": 337.0, "ceiling_s": 600, "within": True, "returncode": 0},
                     {"phase": "demo", "seconds": 250.0, "ceiling_s": 240, "within": False, "returncode": 0}],
          "slowest": [{"seconds": 41.5, "when": "call", "test": "tests/test_demo.py::test_demo_tiny"}]}
    f = tmp_path / "cs.json"
    f.write_text(json.dumps(cs))
    _ok(["report", "docs", "--root", root, "--bench", f"cold_start={f}"])
    page = (root / "docs" / "benchmarks.md").read_text()
    assert _rows(page, "test") == [["337 s", "600 s", "yes", "ok"]]
    assert _rows(page, "demo") == [["250 s", "240 s", "**no**", "ok"]]
    assert _rows(page, "41.50") == [["call", "`tests/test_demo.py::test_demo_tiny`"]]


def _offpolicy_run(run: Path, exploration: float, list_effects: bool, learners: dict[str, tuple[float, float]],
                   dr_bias: float) -> Path:
    """A run directory with what `market generate` and `rerank compare` write for the off-policy tables:
    the manifest's policy and behaviour, and compare.json's per-model figures and ``offpolicy`` key."""
    def stat(mean: float, std: float = 0.0) -> dict:
        return {"mean": mean, "std": std}

    def model(p: float, sd: float = 0.0) -> dict:
        return {"auc": {k: stat(0.7) for k in ("click", "cart", "purchase")}, "ndcg@10": stat(0.5),
                "expected_purchases": stat(p), "expected_gmv": stat(10.0), "expected_purchases_all": stat(p, sd)}
    models = {"logged": model(0.25), **{m: model(*v) for m, v in learners.items()}}
    ests = ("ips", "snips", "dr", "pbm")
    summary = {e: {k: {"bias": dr_bias + i / 10 + j, "rmse": 0.2 + i / 10 + j, "spearman": -0.5 + i / 10}
                   for j, k in enumerate(("purchases", "gmv", "clicks"))} for i, e in enumerate(ests)}
    estimates = {m: {e: {"clicks": 2.0, "purchases": 0.456 + i / 10, "gmv": 20.0} for i, e in enumerate(ests)}
                 for m in learners}
    comp = {**models, "offpolicy": {"logging": "stochastic (logged propensities)", "summary": summary,
                                    "truth": {m: {"clicks": 1.9, "purchases": v[0], "gmv": 6.0}
                                              for m, v in learners.items()}, "estimates": estimates},
            "meta": {"seeds": 3, "models": list(models), "test_requests": 1234, "train_requests": 4000,
                     "evaluator": "present"}}
    behaviour = {"policy_exploration": exploration, "substitution": 0.8 if list_effects else 0.0,
                 "region_price_sensitivity": [0.6, 1.0] if list_effects else [0.0]}
    man = {"source": "synthetic market", "seed": 0, "config": {"behaviour": behaviour},
           "search_policy": {"exploration": exploration, "temperature": 0.5}}
    for rel, obj in (("data/manifest.json", man), ("rerank/compare.json", comp)):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(json.dumps(obj))
    return run


def test_offpolicy_tables_render_from_compare_json(tmp_path):
    """The estimator-vs-truth and counterfactual-learner tables, one row per run: exploration read from
    the copied manifest, each estimator's bias / RMSE / rank correlation from compare.json's
    ``offpolicy``, a learner beating the logged policy only by more than its std over seeds."""
    root = _copy_docs(tmp_path / "repo", with_results=False)
    write_docs(root)
    assert "*No run with off-policy figures in `docs/results/`*" in (root / "README.md").read_text()
    a = _offpolicy_run(tmp_path / "a", 0.1, True, {"dnn-ips": (0.30, 0.01), "armmt-ips": (0.255, 0.01)}, 0.1234)
    b = _offpolicy_run(tmp_path / "b", 0.1, False, {"dnn-ips": (0.24, 0.001), "armmt-ips": (0.28, 0.02)}, -0.01)
    _ok(["report", "docs", "--root", root, "--run", f"cf-e01={a}", "--run", f"cf-control={b}"])
    page = (root / "docs" / "rerank.md").read_text()
    readme = (root / "README.md").read_text()

    # docs/rerank.md: per run and estimator, purchases / GMV / clicks: bias, RMSE, rank correlation
    est = _rows(page, "0.1 (`cf-e01`)")
    assert est[2] == ["DR", "0.3234", "0.4000", "-0.30", "1.32", "1.40", "-0.30", "2.323", "2.400", "-0.30"]
    control = _rows(page, "0.1, no price comparison or substitution (`cf-control`)")
    assert control[0][:4] == ["IPS", "-0.0100", "0.2000", "-0.50"]
    # the learners' true expected purchases among every candidate (DR's estimate in brackets)
    assert _rows(page, "`dnn-ips`") == [["0.3000 ± 0.0100 (DR 0.656)", "0.2400 ± 0.0010 (DR 0.656)"]]
    assert _rows(page, "`logged`") == [["0.2500 ± 0.0000", "0.2500 ± 0.0000"]]
    # beats logged by > 1 std: 0.30 - 0.25 > 0.01 yes; 0.255 - 0.25 < 0.01 no; 0.24 below; 0.28 - 0.25 > 0.02
    assert [r for r in est if len(r) == 2] == [["**yes**", "no"]]
    assert [r for r in control if len(r) == 2] == [["no", "**yes**"]]

    # README: the short version, purchases only
    assert _rows(readme, "0.1") == [["+0.123 / 0.200 / -0.50", "+0.223 / 0.300 / -0.40", "+0.323 / 0.400 / -0.30",
                                     "+0.423 / 0.500 / -0.20"],
                                    ["0.2500", "0.3000 ± 0.0100", "0.2550 ± 0.0100", "dnn-ips"]]
    assert _rows(readme, "0.1, no price comparison or substitution")[1] == [
        "0.2500", "0.2400 ± 0.0010", "0.2800 ± 0.0200", "armmt-ips"]
    assert "1,234 test requests" in readme and "temperature 0.5" in readme

    runs = (root / "docs" / "runs.md").read_text()
    assert "In `docs/results/cf-control/`: `data/manifest.json`, `rerank/compare.json`." in runs
    assert "region_price_sensitivity: [0.0]" in runs
    assert "cf-e01" not in (root / "docs" / "ctr.md").read_text()     # no CTR figures, no empty section


def test_offpolicy_rows_name_a_market_other_than_the_small_one(tmp_path):
    """A run on a real catalog or on a market of another size says so in its row label (the small
    market's rows stay as they were)."""
    root = _copy_docs(tmp_path / "repo", with_results=False)
    runs = {}
    for label, extra in (("cf-e01", {}), ("cf-default", {"n_items": 20_000}),
                         ("cf-real", {"catalog": "items.parquet", "n_items": 44_072})):
        run = _offpolicy_run(tmp_path / label, 0.1, True, {"dnn-ips": (0.30, 0.01)}, 0.1)
        man = json.loads((run / "data/manifest.json").read_text())
        man["config"].update(extra)
        (run / "data/manifest.json").write_text(json.dumps(man))
        runs[label] = run
    _ok(["report", "docs", "--root", root, *(a for k, v in runs.items() for a in ("--run", f"{k}={v}"))])
    page = (root / "docs" / "rerank.md").read_text()
    assert _rows(page, "0.1 (`cf-e01`)")
    assert _rows(page, "20,000 items, 0.1 (`cf-default`)")
    assert _rows(page, "real catalog, 0.1 (`cf-real`)")


def test_filter_report_renders_per_row_and_epoch(tmp_path):
    """`pretrain/filter_report.json` renders as the pretrain-filter block: each row's epochs and their
    union, precision and recall from the JSON, Acc@1 with its std."""
    root = _copy_docs(tmp_path / "repo", with_results=False)
    run = tmp_path / "noisy"
    (run / "pretrain").mkdir(parents=True)
    rep = {"noise_share": 0.2, "rows": {"filter": {
        "epochs": [{"epoch": 1, "precision": 0.5, "recall": 0.25, "dropped": 40, "noisy": 80, "dropped_noisy": 20}],
        "all": {"precision": 0.4, "recall": 0.3, "dropped": 60, "noisy": 80, "dropped_noisy": 24}}},
        "acc@1": {"scl": {"image": {"mean": 0.25, "std": 0.01}, "text": {"mean": 0.2, "std": 0.02}}}}
    (run / "pretrain" / "filter_report.json").write_text(json.dumps(rep))
    _ok(["report", "docs", "--root", root, "--run", f"moon-noisy={run}"])
    page = (root / "docs" / "pretrain.md").read_text()
    assert _rows(page, "`filter`") == [["1", "40", "0.500", "0.250"], ["all", "60", "0.400", "0.300"]]
    assert _rows(page, "`scl`") == [["0.2500 ± 0.0100", "0.2000 ± 0.0200"]]


def _ctr_compare(gauc: dict[str, tuple[float, float]], seeds: int = 3) -> dict:
    """A ctr/compare.json of mean/std GAUCs, ``relative`` as `ctr compare` writes it (against id's mean)."""
    base = gauc["id"][0]
    out: dict = {"seeds": seeds}
    for s, (m, sd) in gauc.items():
        out[s] = {"auc": {"mean": m, "std": sd}, "gauc": {"mean": m, "std": sd}, "logloss": {"mean": 0.2, "std": 0.0},
                  "relative": {"gauc": m / base - 1, "groups_gauc": [2 * (m / base - 1)], "new_items_gauc": None},
                  "bias": {"partial_spearman": {"mean": -0.25, "std": 0.02}}}
    return out


def test_readme_table3_has_one_row_per_market_and_strategy(tmp_path):
    """README's Table 3: the default market's rows, then the real catalog's, each as it came out (mean ± std,
    change against that market's own `id`); a market without figures has no rows."""
    root = _copy_docs(tmp_path / "repo", with_results=False)
    write_docs(root)
    assert "*No CTR comparison in `docs/results/moon-default/`.*" in (root / "README.md").read_text()
    runs = {}
    for label, gauc in (("moon-default", {"id": (0.70, 0.001), "sid": (0.707, 0.002)}),
                        ("moon-real", {"id": (0.80, 0.002), "post": (0.78, 0.004)})):
        run = tmp_path / label
        (run / "ctr").mkdir(parents=True)
        (run / "ctr" / "compare.json").write_text(json.dumps(_ctr_compare(gauc)))
        runs[label] = run
    _ok(["report", "docs", "--root", root, *(a for k, v in runs.items() for a in ("--run", f"{k}={v}"))])
    readme = (root / "README.md").read_text()
    assert _rows(readme, "default") == [["id", "0.7000 ± 0.0010", "+0.00%", "+0.00%", "n/a", "-0.250 ± 0.020"],
                                        ["sid", "0.7070 ± 0.0020", "+1.00%", "+2.00%", "n/a", "-0.250 ± 0.020"]]
    assert _rows(readme, "real catalog") == [["id", "0.8000 ± 0.0020", "+0.00%", "+0.00%", "n/a", "-0.250 ± 0.020"],
                                             ["post", "0.7800 ± 0.0040", "-2.50%", "-5.00%", "n/a", "-0.250 ± 0.020"]]


def test_readme_moon_rows_put_each_market_in_its_own_columns(tmp_path):
    """README's MOON2.0 rows: Acc@1 image / text per market (mean ± std from compare_detail.json); a
    variant one market did not run says so instead of borrowing the other's figure."""
    root = _copy_docs(tmp_path / "repo", with_results=False)
    runs = {}
    for label, acc in (("moon-default", {"scl": 0.30, "moe": 0.28}), ("moon-real", {"scl": 0.20})):
        run = tmp_path / label
        (run / "pretrain").mkdir(parents=True)
        (run / "pretrain" / "compare.json").write_text(json.dumps(
            {v: {"acc@1": {"image": a, "text": a / 2}, "acc@5": {"image": 1.0, "text": 1.0}} for v, a in acc.items()}))
        (run / "pretrain" / "compare_detail.json").write_text(json.dumps({"variants": {
            v: {"seeds": 3, "std": {"acc@1": {"image": 0.01, "text": 0.002}}} for v in acc}}))
        runs[label] = run
    _ok(["report", "docs", "--root", root, *(a for k, v in runs.items() for a in ("--run", f"{k}={v}"))])
    readme = (root / "README.md").read_text()
    assert "| variant | default: Acc@1 image | default: Acc@1 text | real catalog: Acc@1 image |" in readme
    assert _rows(readme, "scl")[0] == ["0.3000 ± 0.0100", "0.1500 ± 0.0020", "0.2000 ± 0.0100", "0.1000 ± 0.0020"]
    assert _rows(readme, "moe")[0] == ["0.2800 ± 0.0100", "0.1400 ± 0.0020", "not run", "not run"]


def test_readme_analyze_gives_each_rate_and_exponent_of_the_default_market(tmp_path):
    """README's short form of MOON's analyses: every metric's slope and interval, the best metric, every
    fitted exponent per axis (an unfitted curve says so), and the wall times, from the default market's JSON."""
    root = _copy_docs(tmp_path / "repo", with_results=False)
    run = tmp_path / "moon-default"
    (run / "analysis").mkdir(parents=True)
    (run / "analysis" / "exchange_rate.json").write_text(json.dumps({
        "checkpoints": [{"checkpoint": c, "metrics": {}, "gain": 0.0} for c in "abcde"], "seeds": 1,
        "exchange_rates": {"acc@1.image": {"slope": 0.02, "ci": [-0.1, 0.03], "spearman": 0.4}},
        "best_metric": "acc@1.image", "rule": "weak evidence", "seconds": 965.2}))
    law = {"power_law": {"exponent": 0.17, "ci": [0.1, 0.24]}}
    (run / "analysis" / "scaling.json").write_text(json.dumps({"seconds": 1200, "axes": {
        "pairs": {"label": "training pairs", "points": [{}] * 4,
                  "curves": {"acc@1.image": law, "gain": {"power_law": {"reason": "a value <= 0"}}}},
        "L": {"label": "behaviour length L", "points": [{}] * 4, "curves": {"gain": law}}}}))
    _ok(["report", "docs", "--root", root, "--run", f"moon-default={run}"])
    readme = (root / "README.md").read_text()
    assert ("- Exchange rate (5 checkpoints, 1 CTR seed(s), wall 965 s): GAUC gain per unit of each metric, 95% "
            "interval: `acc@1.image` +0.0200 [-0.1000, +0.0300]. Best: `acc@1.image` (weak evidence).") in readme
    assert ("training pairs (4 points): `acc@1.image` +0.170 [+0.100, +0.240], `gain` not fitted; "
            "behaviour length L (4 points): `gain` +0.170 [+0.100, +0.240].") in readme
    assert "- Scaling (wall 1,200 s)" in readme
