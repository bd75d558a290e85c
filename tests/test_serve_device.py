"""`mmrank serve --device`: the bundle's models on one device, each batch scored there.

On this (CPU) machine (``--device cuda``'s one-line exit 2: tests/test_device_flags.py): an app built
with ``device: cpu`` ranks exactly as the default one does and says where it runs (/healthz,
/v1/bundle, /metrics). On a CUDA machine (tests marked ``gpu``): one scored request on the GPU agrees
with the CPU's within bf16's tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

torch.set_num_threads(1)
NO_CUDA = not torch.cuda.is_available()


def _body(run: Path) -> dict:
    """One /v1/rank request: a logged user with a given history, 40 candidates."""
    ids = pq.read_table(run / "data" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    return {"user": {"user_id": 1, "history": ids[100:120]}, "context": {"region": 0},
            "candidates": ids[:40]}


def _rank(run: Path, strategy: str, **settings) -> tuple[dict, dict, str]:
    """(the /v1/rank answer, /healthz, /metrics) of an app built with ``settings``."""
    from fastapi.testclient import TestClient

    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    app = create_app(Settings(run=run, strategy=strategy, api_key=None, threads=1, **settings))
    with TestClient(app) as c:
        r = c.post("/v1/rank", json=_body(run))
        assert r.status_code == 200, r.text
        return r.json(), c.get("/healthz").json(), c.get("/metrics").text


@pytest.mark.parametrize("strategy", ["simtier"])
def test_app_on_cpu_ranks_as_the_default(serving_run: Path, strategy: str) -> None:
    default, _, _ = _rank(serving_run, strategy)
    cpu, health, metrics = _rank(serving_run, strategy, device="cpu")
    assert [i["item_id"] for i in cpu["items"]] == [i["item_id"] for i in default["items"]]
    assert [i["logit"] for i in cpu["items"]] == [i["logit"] for i in default["items"]]  # same numbers
    assert len(cpu["items"]) == 40
    assert health["device"].startswith("cpu (")
    assert 'mmrank_device_info{device="cpu (' in metrics


def test_bundle_on_cpu_scores_as_the_parquet_path(serving_run: Path) -> None:
    """The bundle loaded with ``hardware: cpu`` gives the logits of the model scored directly."""
    from mmrank.ctr.scoring import score
    from mmrank.device import HardwareConfig
    from mmrank.serve.builder import RankQuery, build
    from mmrank.serve.bundle import load_bundle
    from mmrank.serve.scoring import forward

    body = _body(serving_run)
    q = RankQuery(user_id=1, history=np.asarray(body["user"]["history"]), region=0, query=None,
                  candidates=np.asarray(body["candidates"]))
    plain = load_bundle(serving_run, "simtier")
    cpu = load_bundle(serving_run, "simtier", hardware=HardwareConfig(device="cpu"))
    try:
        assert cpu.device == torch.device("cpu") and cpu.describe()["device"].startswith("cpu")
        built = build([q], cpu)
        assert all(t.device.type == "cpu" for t in built.batch.values())
        got = forward(cpu, built)
        want = score(plain.model, build([q], plain).batch, build([q], plain).vectors).numpy()
        np.testing.assert_array_equal(got, want)
    finally:
        plain.close()
        cpu.close()


def test_load_bundle_cuda_without_cuda_fails_before_loading(tmp_path: Path) -> None:
    from mmrank.device import DeviceError, HardwareConfig
    from mmrank.serve.bundle import load_bundle

    if not NO_CUDA:
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA device"):
        load_bundle(tmp_path, hardware=HardwareConfig(device="cuda"))  # not even a run: device first


@pytest.mark.gpu
def test_one_request_scored_on_cuda_agrees_with_cpu(serving_run: Path) -> None:
    cpu, _, _ = _rank(serving_run, "simtier", device="cpu")
    gpu, health, metrics = _rank(serving_run, "simtier", device="cuda")
    assert health["device"].startswith("cuda:") and "mmrank_device_info" in metrics
    a = np.array([i["logit"] for i in sorted(cpu["items"], key=lambda i: i["item_id"])])
    b = np.array([i["logit"] for i in sorted(gpu["items"], key=lambda i: i["item_id"])])
    # bf16 autocast: ~3 significant digits per matmul; logits agree to 0.05 + 2%
    np.testing.assert_allclose(b, a, atol=0.05, rtol=0.02)
    fp32, _, _ = _rank(serving_run, "simtier", device="cuda", bf16=False)
    c = np.array([i["logit"] for i in sorted(fp32["items"], key=lambda i: i["item_id"])])
    np.testing.assert_allclose(c, a, atol=1e-3, rtol=1e-3)


def test_serve_latency_takes_device_and_concurrency(monkeypatch, capsys, serving_run: Path,
                                                    tmp_path: Path) -> None:
    """``benchmarks/serve_latency.py --device cpu --concurrency 1,4 --no-plain`` at toy size: the
    p99 of each level, printed and in the JSON, on the device it names."""
    import json

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import serve_latency

    out_json = tmp_path / "s.json"
    threads = torch.get_num_threads()
    try:
        serve_latency.main(["--run", str(serving_run), "--strategy", "simtier", "--requests", "6",
                            "--candidates", "20", "--history", "10", "--forward-repeats", "3",
                            "--device", "cpu", "--concurrency", "4,1", "--no-plain", "--rerank-model", "",
                            "--json", str(out_json)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "mmrank p99 at concurrency 1 on cpu (" in out and "mmrank p99 at concurrency 4 on cpu (" in out
    assert "mmrank / plain" not in out  # no plain peer measured, no ratio against it
    doc = json.loads(out_json.read_text())
    run = doc["runs"][0]
    assert set(run["loads"]) == {"mmrank@1", "mmrank@4"} and doc["config"]["concurrency"] == [1, 4]
    assert all(v["errors"] == 0 and v["n"] == 6 for v in run["loads"].values())
    assert set(doc["summary"]) == {"overhead_c1_p99"} and run["raw"]["device"].startswith("cpu (")
    if NO_CUDA:
        from mmrank.device import DeviceError

        with pytest.raises(DeviceError, match="no CUDA device"):
            serve_latency.main(["--run", str(serving_run), "--device", "cuda"])
