"""A bounded soak with faults (half a minute, :mod:`mmrank.testing.soak`, through the benchmark's
``serve_load.py --soak``, whose report it checks too): rank, search and ingest against `mmrank serve
--workers 2` on a Redis table, while Redis restarts, the bundle is swapped and one worker is killed
with SIGKILL. No acknowledged item is lost, no answer is a 5xx other than the documented 503 (with
Retry-After), and a surviving worker's resident memory grows under 10% after warm-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_soak_with_redis_restart_bundle_swap_and_a_killed_worker(serving_run: Path, monkeypatch,
                                                                  capsys) -> None:
    import torch

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import serve_load

    threads = torch.get_num_threads()
    try:  # the benchmark soaks a copy of the run
        r = serve_load.main(["--run", str(serving_run), "--strategy", "simtier", "--soak", "32",
                             "--swap-strategy", "id"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "missing after the faults: 0" in out and "bundle swap answered 200" in out
    assert "resident memory of a surviving worker:" in out
    print(f"soak: {r['statuses']}, {r['acknowledged']} items acknowledged, dropped {r['dropped']}, "
          f"RSS {r['rss_warm_kb']} -> {r['rss_end_kb']} kB")
    assert r["swap_status"] == 200 and not r["worker_died_on_its_own"] and r["victim_replaced"], r
    assert r["acknowledged"] > 10 and r["missing"] == [] and r["unknown_in_rank"] == [], r
    bad = {k: {s: n for s, n in v.items() if s >= 500 and s != 503} for k, v in r["statuses"].items()}
    assert bad == {"rank": {}, "search": {}, "items": {}}, r["statuses"]
    assert r["no_retry_after"] == [], r["no_retry_after"][:3]
    assert all(v.get(200, 0) + v.get(201, 0) > 20 for v in r["statuses"].values()), r["statuses"]
    # connections cut only by the kill (the killed worker's in-flight requests), at most one per client
    assert all(0 <= at < 10 for _, at in r["dropped"]) and len(r["dropped"]) <= 4, r["dropped"]
    assert r["rss_end_kb"] < 1.10 * r["rss_warm_kb"], r


def test_a_server_started_while_redis_is_down_waits_for_it(serving_run_copy: Path, tmp_path: Path) -> None:
    """A worker (re)started during a Redis restart waits for the store instead of failing start-up
    (which would stop the whole server)."""
    import threading
    import time

    import httpx

    from mmrank.testing.serving import ServerProcess, move_table_to_redis, redis_server

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")
    (tmp_path / "redis").mkdir()
    proc, url = redis_server(tmp_path / "redis")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    move_table_to_redis(serving_run_copy, url, namespace="late")
    proc.terminate()
    proc.wait(timeout=10)
    srv = ServerProcess(serving_run_copy, extra_args=("--strategy", "simtier"), timeout=120)
    started: list[BaseException | None] = []
    t = threading.Thread(target=lambda: started.append(_start(srv)))
    t.start()
    time.sleep(4.0)  # the server is up and waiting for Redis
    assert srv.proc.poll() is None and not started
    proc, _ = redis_server(tmp_path / "redis", port=port)
    try:
        t.join(timeout=120)
        assert started == [None], started
        r = httpx.post(srv.url + "/v1/search", json={"text": "dress", "k": 3}, timeout=30)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
    finally:
        srv.stop()
        proc.terminate()
        proc.wait(timeout=10)


def _start(srv) -> BaseException | None:  # noqa: ANN001
    try:
        srv.start()
        return None
    except BaseException as err:  # noqa: BLE001 - handed to the test
        return err
