"""The speed benchmarks: their peers compute what they are timed against, and the scripts that need
no prepared run (pretrain_throughput, ctr_throughput, ann, roofline, rerank_latency) run at toy
sizes. A peer that computes another loss, or a script that no longer runs, would make a printed
ratio meaningless."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmrank.pretrain.losses import InfoNCELoss, MomentumQueue

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture
def pretrain_throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import pretrain_throughput

    return pretrain_throughput


def _run_script(monkeypatch, name: str, argv: list[str]) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        __import__(name).main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("log_q", [False, True])
def test_dense_peer_computes_the_loss_it_is_timed_against(pretrain_throughput, log_q):
    """``DenseInfoNCE`` (the previous formulation, timed beside the fast path) gives InfoNCELoss's
    values and gradients with a momentum queue, same-id masking, nested dims and logQ."""
    g = torch.Generator().manual_seed(0)
    b, dim, n_items = 8, 16, 30
    queue = MomentumQueue(dim, 40)
    queue.enqueue(F.normalize(torch.randn(40, dim, generator=g), dim=-1),
                  torch.randint(0, n_items, (40,), generator=g))
    q0 = F.normalize(torch.randn(b, dim, generator=g), dim=-1)
    k0 = F.normalize(torch.randn(b, dim, generator=g), dim=-1)
    ids = torch.randint(0, n_items, (b,), generator=g)
    lq = torch.log_softmax(torch.randn(n_items, generator=g), 0) if log_q else None
    out = []
    for cls in (InfoNCELoss, pretrain_throughput.DenseInfoNCE):
        loss = cls(nested_dims=(8, 16))
        loss.chunk = 16
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        terms = loss(q, k, queue=queue, q_ids=ids, k_ids=ids, log_q=lq)
        sum(terms.values()).backward()
        out.append(({n: v.item() for n, v in terms.items()}, q.grad, k.grad))
    (fast, gq, gk), (dense, dq, dk) = out
    assert fast == pytest.approx(dense, rel=1e-5)
    torch.testing.assert_close(gq, dq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gk, dk, rtol=1e-5, atol=1e-6)


def test_pretrain_throughput_runs_with_its_reference(monkeypatch, capsys):
    """The benchmark as the issue runs it (the dense peer included), at toy sizes."""
    _run_script(monkeypatch, "pretrain_throughput", ["--sizes", "64", "--steps", "1", "--batch-size", "16",
                                                     "--items", "300", "--pairs", "600", "--threads", "1"])
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["64"])
    assert len(row) == 8 and row[-1].endswith("x")                  # the dense peer was timed
    assert "roofline K=64:" in out and "% of it" in out



def test_ctr_throughput_runs_small(monkeypatch, capsys):
    """mmrank's DIN runner, its roofline and matmul-only lines, and the SimTier step times, at toy
    sizes (DeepCTR-Torch and torch.compile left out: an optional extra, and a slow first call)."""
    _run_script(monkeypatch, "ctr_throughput", [
        "--rows", "2048", "--items", "500", "--users", "500", "--cats", "20", "--skip-deepctr",
        "--no-compile", "--simtier-rows", "1024", "--warmup", "1024", "--chunks", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "roofline mmrank DIN train:" in out and "roofline mmrank DIN inference:" in out
    assert "its matmuls alone, replayed at their own shapes" in out
    assert "+SimTier from pipeline (the default)" in out


def test_ann_and_roofline_run_small(monkeypatch, capsys):
    _run_script(monkeypatch, "ann", ["--sizes", "2000", "--queries", "20"])
    _run_script(monkeypatch, "roofline", ["--threads", "1"])
    out = capsys.readouterr().out
    assert "recall@10=" in out and "machine (1 threads): matmul fp32" in out


def test_rerank_latency_runs_small(monkeypatch, capsys):
    _run_script(monkeypatch, "rerank_latency", ["--reps", "3", "--dim", "32"])
    out = capsys.readouterr().out
    assert "roofline dnn forward (p50):" in out and "roofline armmt forward (p50):" in out
    assert "ARMMT / DNN (request)" in out



def _rendered(tmp_path, name: str, out_json) -> str:
    """docs/serving.md after ``mmrank report docs --bench name=out_json`` on a copy of the docs."""
    import shutil

    from typer.testing import CliRunner

    from mmrank.cli import app

    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("results"))
    shutil.copyfile(ROOT / "README.md", root / "README.md")
    res = CliRunner().invoke(app, ["report", "docs", "--root", str(root), "--bench", f"{name}={out_json}"])
    assert res.exit_code == 0, (res.output, res.exception)
    return (root / "docs" / "serving.md").read_text()


def test_serve_latency_states_its_goals_as_ratios_over_repeats(monkeypatch, capsys, serving_run, tmp_path):
    """Both servers up, two repeats at toy size: each goal a ratio with its mean and spread, and the
    JSON the docs are made from holds every run's figures."""
    import json

    out_json = tmp_path / "serve_latency.json"
    _run_script(monkeypatch, "serve_latency", [
        "--run", str(serving_run), "--strategy", "simtier", "--requests", "8", "--candidates", "20",
        "--history", "10", "--also-candidates", "5", "--forward-repeats", "5", "--repeat", "2",
        "--json", str(out_json)])
    out = capsys.readouterr().out
    assert "-- run 2 " in out and "over 2 run(s), mean (min - max, std):" in out
    assert "(mmrank p99 - raw forward p99) / raw forward p99 = " in out and "mmrank / plain requests/s = " in out
    doc = json.loads(out_json.read_text())
    assert len(doc["runs"]) == 2 and set(doc["summary"]) == {"overhead_c1_p99", "speedup_c16", "speedup_c16_small"}
    for name, s in doc["summary"].items():
        values = [r["ratios"][name] for r in doc["runs"]]
        assert s["values"] == values and s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
    for r in doc["runs"]:  # the ratios are the printed figures' own
        m1, raw = r["loads"]["mmrank@1"], r["raw"]
        assert r["ratios"]["overhead_c1_p99"] == (m1["p99_ms"] - raw["forward_p99_ms"]) / raw["forward_p99_ms"]
        assert r["ratios"]["speedup_c16"] == r["loads"]["mmrank@16"]["req_per_s"] / r["loads"]["plain@16"]["req_per_s"]
        assert all(v["errors"] == 0 and v["n"] == 8 for v in r["loads"].values())
    page = _rendered(tmp_path, "serve_latency", out_json)   # the docs table is the JSON's summary
    o = doc["summary"]["overhead_c1_p99"]
    assert (f"| {o['mean']:.2f} | {o['min']:.2f} - {o['max']:.2f} | {o['std']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in o['values'])} |") in page


def test_serve_load_sweeps_every_endpoint_to_its_knee(monkeypatch, capsys, serving_run, tmp_path):
    """Toy sweep (two short rates per endpoint, a deadline no toy rate reaches): every endpoint
    answered, its knee the highest rate run, the rank/plain ratio from the two knees."""
    import json

    out_json = tmp_path / "serve_load.json"
    _run_script(monkeypatch, "serve_load", [
        "--run", str(serving_run), "--strategy", "simtier", "--candidates", "20", "--history", "10",
        "--start", "4", "--step", "2", "--max-rate", "8", "--seconds", "0.5", "--deadline-ms", "20000",
        "--json", str(out_json)])
    out = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    (run,) = doc["runs"]
    for e in ("rank", "search-text", "search-photo", "items", "plain-rank"):
        assert [s["rate"] for s in run[e]["steps"]] == [4, 8] and run[e]["knee"] == 8, (e, run[e])
        assert all(s["ok"] == s["n"] > 0 for s in run[e]["steps"]), (e, run[e])
    assert run["ratio_rank_to_plain"] == 1.0 and doc["summary"]["rank"]["values"] == [8]
    assert "ratio_rank_to_plain" in out and "knees (requests/s with p99 under 20000 ms)" in out
    page = _rendered(tmp_path, "serve_load", out_json)
    assert "| rank (requests/s) | 8.0 | 8.0 - 8.0 | 0.0 | 8.0 |" in page
    assert "| ratio_rank_to_plain | 1.00 | 1.00 - 1.00 | 0.00 | 1.00 |" in page
