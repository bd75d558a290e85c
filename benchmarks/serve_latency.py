"""/v1/rank latency and throughput: mmrank (request batching) against a plain FastAPI endpoint that runs
one forward per request on the same model, beside the raw forward time, all in one run.

Both servers run on 127.0.0.1 in their own process with one uvicorn worker, the same torch
threads and the same process settings (mmrank.threads: allocator, GIL switch interval); the client
(asyncio + httpx, in this process) sends /v1/rank requests with 200 candidates and 50 behaviour items:
2,000 at concurrency 1, then 2,000 at concurrency 16, to each server. Both servers are up at once and
are loaded in alternating chunks (4 per level), so a change in the machine's load hits both alike.

    python benchmarks/serve_latency.py                       # builds a small run in a temp dir
    python benchmarks/serve_latency.py --run runs/demo       # a run made by `mmrank demo`

Goals, as ratios of figures measured in the same run (so that they survive the machine): at
concurrency 1, mmrank's p99 over the raw forward's p99 by at most 60% of the raw forward
(``(mmrank p99 - raw p99) / raw p99 <= 0.6``: the server adds well under one forward's time); at
concurrency 16, at least 2x the plain endpoint's requests/s. ``--repeat 3`` measures three times and
prints each ratio's mean and spread; ``--json FILE`` writes every figure (the docs are made from it).

    python benchmarks/serve_latency.py --repeat 3 --json serve_latency.json

/v1/rerank (``--rerank-model``, default armmt): after the /v1/rank runs, a server with that re-ranker
gets the run's test lists (every retrieved candidate, the server filling in history and sales) at
concurrency 1 and 16; figures as ratios against the raw re-ranker forward (features + forward of one
list, :meth:`mmrank.rerank.serving.ListReranker.score`) measured in the same run: the p99 overhead at
concurrency 1, and requests/s at concurrency 16 over one forward per request (``1 / median``). No goal
is set for them yet.

Roofline (``benchmarks/roofline.py``): the fp32 matmul roof on the servers' torch threads, measured
in this process at the start of the run, the model's FLOPs per request (one request's forward,
counted by ``torch.utils.flop_counter``) and the share of that limit reached by the raw forward and
by mmrank at concurrency 1.

On a GPU (``--device cuda``): both servers score on it (``mmrank serve --device cuda``; the plain
endpoint loads its bundle there too), the raw forward is timed there (synchronised), bf16 autocast
as the run config's default (``--no-bf16``: fp32), and the roof is the GPU's bf16 matmul rate (fp32
with ``--no-bf16``). ``--concurrency 1,16`` (the default) picks the levels; the goals are computed
where levels 1 and 16 are both measured. ``--no-plain`` leaves the plain peer out (p99 against the raw
forward only: quicker, for a short GPU check).

    python benchmarks/serve_latency.py --device cuda --concurrency 1,16 --requests 500 --rerank-model ''
"""

import argparse
import asyncio
import copy
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


# ---- the peer: a plain FastAPI endpoint, one forward per request ------------------------------------------
def plain_app(run: Path, strategy: str | None, threads: int, device: str = "cpu", bf16: bool = True):
    """FastAPI with one sync endpoint: parse, build the request's batch, one forward, answer. FastAPI
    runs sync endpoints on its thread pool; each thread gets its own copy of the model (the vector
    table is swapped per call), so requests run concurrently as a plain server would run them."""
    from fastapi import FastAPI

    from mmrank import threads as thread_settings
    from mmrank.device import HardwareConfig
    from mmrank.serve import schemas as S
    from mmrank.serve.scoring import run_batch
    from mmrank.serve.builder import RankQuery
    from mmrank.serve.bundle import load_bundle

    thread_settings.configure(threads)
    thread_settings.reuse_freed_memory()  # the same process settings as mmrank's server: only
    thread_settings.serving_switch_interval()  # the batching differs
    bundle = load_bundle(run, strategy, hardware=HardwareConfig(device=device, bf16=bf16))
    gc.freeze()  # as mmrank's server does after loading its bundle
    local = threading.local()
    app = FastAPI(title="plain")

    def my_bundle():
        if not hasattr(local, "bundle"):
            b = copy.copy(bundle)
            b.model = copy.deepcopy(bundle.model)
            local.bundle = b
        return local.bundle

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/rank")
    def rank(body: S.RankIn) -> dict:
        q = RankQuery(user_id=body.user.user_id,
                      history=None if body.user.history is None else np.asarray(body.user.history, np.int64),
                      region=body.context.region, query=body.context.query,
                      candidates=np.asarray(body.candidates, np.int64))
        return run_batch(my_bundle(), [q], [False])[0]

    return app


def serve_plain(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(plain_app(Path(args.run), args.strategy, args.threads, args.device, args.bf16),
                host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


class PlainServer:
    def __init__(self, run: Path, strategy: str | None, threads: int, device: str = "cpu",
                 bf16: bool = True) -> None:
        from mmrank.testing.serving import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, __file__, "--plain-server", "--run", str(run), "--port", str(self.port),
                    "--threads", str(threads), "--device", device] + \
            (["--strategy", strategy] if strategy else []) + ([] if bf16 else ["--no-bf16"])

    def __enter__(self) -> "PlainServer":
        import subprocess

        import httpx

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for _ in range(1200):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the plain server did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# ---- load ---------------------------------------------------------------------------------------------------
def payloads(run: Path, n: int, n_cand: int, n_hist: int, seed: int = 0) -> list[dict]:
    import pyarrow.parquet as pq

    from mmrank.store.backends import open_table

    ids = open_table(Path(run) / "embeddings").ids()
    if len(ids) < n_cand + n_hist:
        raise SystemExit(f"{run}: {len(ids)} items in the table, need {n_cand + n_hist}")
    rng = np.random.default_rng(seed)
    users = pq.read_table(Path(run) / "data" / "events.parquet", columns=["user_id"]).column("user_id").to_numpy()
    out = []
    for _ in range(n):
        pick = rng.choice(ids, n_cand + n_hist, replace=False)
        out.append({"user": {"user_id": int(rng.choice(users)), "history": [int(x) for x in pick[n_cand:]]},
                    "context": {"region": 0}, "candidates": [int(x) for x in pick[:n_cand]]})
    return out


async def _load(url: str, bodies: list[dict], total: int, concurrency: int, path: str = "/v1/rank") -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < total:
                body = bodies[next_i % len(bodies)]
                next_i += 1
                t0 = time.perf_counter()
                r = await client.post(path, json=body)
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200 or len(r.json()["items"]) != len(body["candidates"]):
                    errors += 1

        for b in bodies[:3]:  # warm-up
            await client.post(path, json=b)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "errors": errors, "wall": wall}


def load(urls: dict[str, str], bodies: list[dict], total: int, concurrency: int,
         rounds: int = 4, path: str = "/v1/rank") -> dict[str, dict]:
    """``total`` requests to each server, in ``rounds`` alternating chunks (the order flips every
    round), so that a change in the machine's load during the run hits both servers alike."""
    parts: dict[str, list[dict]] = {name: [] for name in urls}
    names = list(urls)
    for r in range(rounds):
        n = total // rounds + (total % rounds if r == rounds - 1 else 0)
        for name in (names if r % 2 == 0 else names[::-1]):
            parts[name].append(asyncio.run(_load(urls[name], bodies, n, concurrency, path)))
    out = {}
    for name, ps in parts.items():
        a = np.concatenate([np.asarray(p["lat"]) for p in ps]) * 1e3
        out[name] = {"n": len(a), "errors": sum(p["errors"] for p in ps), "p50_ms": float(np.percentile(a, 50)),
                     "p99_ms": float(np.percentile(a, 99)), "req_per_s": len(a) / sum(p["wall"] for p in ps)}
    return out


def raw_forward(run: Path, strategy: str | None, threads: int, body: dict, repeats: int = 200,
                device: str = "cpu", bf16: bool = True) -> dict:
    """The model alone on one request's rows: build (+ vectors, moved to the device) and forward, and
    forward only (ms; on CUDA each timing waits for the device, and the logits come back to the host
    as the server's do)."""
    from mmrank import threads as thread_settings
    from mmrank.ctr.scoring import score as ctr_score
    from mmrank.device import HardwareConfig, synchronize
    from mmrank.serve.builder import RankQuery, build
    from mmrank.serve.bundle import load_bundle

    thread_settings.configure(threads)
    thread_settings.reuse_freed_memory()
    bundle = load_bundle(run, strategy, hardware=HardwareConfig(device=device, bf16=bf16))
    dev = bundle.device

    def score(model, batch, vectors):  # noqa: ANN001, ANN202 - as the server's forward: on its device
        return ctr_score(model, batch, vectors, bf16=bundle.bf16)  # (bf16 on CUDA), fp32 host logits
    q = RankQuery(user_id=body["user"]["user_id"], history=np.asarray(body["user"]["history"]),
                  region=0, query=None, candidates=np.asarray(body["candidates"]))
    fwd, both = [], []
    for _ in range(3):  # warm-up (CUDA kernels, autocast caches)
        built = build([q], bundle)
        score(bundle.model, built.batch, built.vectors)
    for _ in range(repeats):
        synchronize(dev)
        t0 = time.perf_counter()
        built = build([q], bundle)
        synchronize(dev)
        t1 = time.perf_counter()
        score(bundle.model, built.batch, built.vectors)
        t2 = time.perf_counter()
        fwd.append(t2 - t1)
        both.append(t2 - t0)
    from roofline import count_flops

    info = {"flops": count_flops(lambda: score(bundle.model, built.batch, built.vectors)),
            "device": bundle.device_name,
            "strategy": bundle.strategy, "encoder_version": bundle.encoder_version,
            "forward_ms": float(np.median(fwd) * 1e3), "build_forward_ms": float(np.median(both) * 1e3),
            "forward_p99_ms": float(np.percentile(fwd, 99) * 1e3), "per_request_ms": {}}
    # what one forward over k requests costs per request (why batching does or does not pay here)
    for k in (1, 2, 4, 8, 16):
        built = build([q] * k, bundle)
        times = []
        for _ in range(max(3, repeats // (4 * k))):
            t0 = time.perf_counter()
            score(bundle.model, built.batch, built.vectors)
            times.append(time.perf_counter() - t0)
        info["per_request_ms"][k] = float(np.median(times) * 1e3 / k)
    bundle.close()
    return info


# ---- /v1/rerank ---------------------------------------------------------------------------------------------
def rerank_payloads(run: Path, n: int) -> list[dict]:
    """The run's first ``n`` test lists as /v1/rerank bodies (user, query, region, ts, every retrieved
    candidate with its production score; the server fills in history, sales, price, category)."""
    from mmrank.rerank.data import load_lists
    from mmrank.rerank.serving import logged_list_bodies

    lists = load_lists(Path(run) / "data" / "lists.parquet")
    return logged_list_bodies(lists, lists.test_rows()[:n])


def rerank_raw_forward(run: Path, model: str, threads: int, bodies: list[dict], repeats: int = 200,
                       device: str = "cpu", bf16: bool = True) -> dict:
    """The re-ranker alone on one list at a time (prepared once: features + forward, ms; on
    ``device``, its scores back on the host), cycling through ``bodies``."""
    from mmrank import threads as thread_settings
    from mmrank.device import HardwareConfig
    from mmrank.rerank.serving import load_reranker

    thread_settings.configure(threads)
    rr = load_reranker(run, model, hardware=HardwareConfig(device=device, bf16=bf16))
    prepared = [rr.prepare(b) for b in bodies]
    rr.score(prepared[:1])  # warm-up (query encoding cached)
    times = []
    for k in range(repeats):
        p = prepared[k % len(prepared)]
        t0 = time.perf_counter()
        rr.score([p])
        times.append(time.perf_counter() - t0)
    a = np.asarray(times) * 1e3
    return {"model": rr.name, "version": rr.version, "forward_ms": float(np.median(a)),
            "forward_p99_ms": float(np.percentile(a, 99)),
            "candidates_mean": float(np.mean([len(p.candidates) for p in prepared]))}


def measure_rerank(run: Path, args: argparse.Namespace, url: str, bodies: list[dict]) -> dict:
    """One repeat for /v1/rerank: the raw forward, then the server at concurrency 1 and 16; ratios
    against the raw forward of the same model in the same run."""
    raw = rerank_raw_forward(run, args.rerank_model, args.threads, bodies, repeats=args.forward_repeats,
                             device=args.device, bf16=args.bf16)
    loads = {f"mmrank@{c}": load({"mmrank": url}, bodies, args.requests, c, path="/v1/rerank")["mmrank"]
             for c in (1, 16)}
    m1, m16 = loads["mmrank@1"], loads["mmrank@16"]
    return {"raw": raw, "loads": loads, "load_average": os.getloadavg()[0],
            "ratios": {"rerank_overhead_c1_p99": (m1["p99_ms"] - raw["forward_p99_ms"]) / raw["forward_p99_ms"],
                       "rerank_c16_vs_forward": m16["req_per_s"] / (1e3 / raw["forward_ms"])}}


def print_rerank(k: int, m: dict) -> None:
    raw = m["raw"]
    print(f"\n-- /v1/rerank run {k + 1} ({raw['model']}, {raw['candidates_mean']:.0f} candidates per list on "
          f"average; load average {m['load_average']:.2f}) --")
    print(f"raw re-ranker forward (features + forward, one list): median {raw['forward_ms']:.2f} ms, "
          f"p99 {raw['forward_p99_ms']:.2f} ms")
    print(f"{'server':<8} {'conc':>4} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for key, r in m["loads"].items():
        name, c = key.split("@")
        print(f"{name:<8} {c:>4} {r['n']:>8} {r['errors']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['req_per_s']:>8.1f}")
    rt = m["ratios"]
    print(f"concurrency 1: (p99 - raw forward p99) / raw forward p99 = {rt['rerank_overhead_c1_p99']:.2f}; "
          f"concurrency 16: requests/s over the raw forward's (1 / median) = {rt['rerank_c16_vs_forward']:.2f}x")


def rerank_phase(run: Path, args: argparse.Namespace, built: bool) -> dict | None:
    """/v1/rerank on its own server (the re-ranker trained first on a run this benchmark built)."""
    from mmrank.testing.serving import ServerProcess

    if not args.rerank_model:
        return None
    have = (run / "rerank" / args.rerank_model / "model.safetensors").exists()
    if not have and built:
        from mmrank.rerank.stage import train_model
        from mmrank.rerank.trainer import RerankTrainConfig

        print(f"training {args.rerank_model} on the run's lists (latest 2,000 training lists) ...", flush=True)
        train_model(run, args.rerank_model, train_cfg=RerankTrainConfig(max_train_lists=2000), progress=False)
    elif not have:
        print(f"\n/v1/rerank: skipped ({run}/rerank/{args.rerank_model} is not trained: `mmrank rerank train "
              f"--run {run} --model {args.rerank_model}`)")
        return None
    bodies = rerank_payloads(run, 64)
    extra = ("--rerank-model", args.rerank_model, "--rerank-concurrency", "1000", "--deadline-ms", "600000",
             "--max-wait-ms", str(args.max_wait_ms), "--max-batch-rows", str(args.max_batch_rows),
             "--device", args.device) + (("--strategy", args.strategy) if args.strategy else ()) + \
        (("--config", str(_no_bf16_config())) if not args.bf16 else ())
    runs = []
    with ServerProcess(run, extra_args=extra, threads=args.threads) as srv:
        for k in range(args.repeat):
            runs.append(measure_rerank(run, args, srv.url, bodies))
            print_rerank(k, runs[-1])
    summary = {name: spread([m["ratios"][name] for m in runs]) for name in runs[0]["ratios"]}
    o, t = summary["rerank_overhead_c1_p99"], summary["rerank_c16_vs_forward"]
    print(f"/v1/rerank over {args.repeat} run(s): concurrency 1 p99 overhead {o['mean']:.2f} "
          f"({o['min']:.2f} - {o['max']:.2f}); concurrency 16 requests/s over the raw forward's "
          f"{t['mean']:.2f}x ({t['min']:.2f} - {t['max']:.2f})")
    return {"summary": summary, "runs": runs}


# The goals, as ratios measured in one run (so they hold on any machine that runs both sides at once):
GOAL_OVERHEAD = 0.6   # concurrency 1: (mmrank p99 - raw forward p99) / raw forward p99 at most this
GOAL_SPEEDUP = 2.0    # concurrency 16: mmrank requests/s / the plain endpoint's at least this


def measure(run: Path, args: argparse.Namespace, urls: dict[str, str], bodies: list[dict],
            small: list[dict] | None) -> dict:
    """One repeat: the raw forward, then the servers at each concurrency level (default 1 and 16) and
    the small requests; the goals' ratios where their levels (and the plain peer) were measured."""
    raw = raw_forward(run, args.strategy, args.threads, bodies[0], repeats=args.forward_repeats,
                      device=args.device, bf16=args.bf16)
    loads = {}
    for c in args.concurrency:
        for name, r in load(urls, bodies, args.requests, c).items():
            loads[f"{name}@{c}"] = r
    small_res = load(urls, small, max(2, args.requests // 2), 16) if small and "plain" in urls else {}
    ratios = {}
    if "mmrank@1" in loads:
        ratios["overhead_c1_p99"] = (loads["mmrank@1"]["p99_ms"] - raw["forward_p99_ms"]) / raw["forward_p99_ms"]
    if "plain@16" in loads:
        ratios["speedup_c16"] = loads["mmrank@16"]["req_per_s"] / loads["plain@16"]["req_per_s"]
    if small_res:
        ratios["speedup_c16_small"] = small_res["mmrank"]["req_per_s"] / small_res["plain"]["req_per_s"]
    return {"raw": raw, "loads": loads, "small": small_res, "ratios": ratios,
            "load_average": os.getloadavg()[0]}


def spread(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "std": float(a.std()),
            "values": [float(v) for v in a]}


def print_repeat(k: int, m: dict, args: argparse.Namespace, roofs: dict) -> None:
    from roofline import roofline_line

    raw = m["raw"]
    print(f"\n-- run {k + 1} (load average {m['load_average']:.2f}) --")
    print(f"raw forward (model only, one request's rows): median {raw['forward_ms']:.2f} ms, "
          f"p99 {raw['forward_p99_ms']:.2f} ms; build + forward median {raw['build_forward_ms']:.2f} ms")
    print("one forward over k requests, ms per request: " +
          ", ".join(f"k={k_}: {v:.2f}" for k_, v in raw["per_request_ms"].items()))
    print(f"{'server':<8} {'conc':>4} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for key in sorted(m["loads"], key=lambda k: (int(k.split("@")[1]), k.split("@")[0] != "mmrank")):
        name, c = key.split("@")
        r = m["loads"][key]
        print(f"{name:<8} {c:>4} {r['n']:>8} {r['errors']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['req_per_s']:>8.1f}")
    for name, r in m["small"].items():
        print(f"{name:<8} {16:>4} {r['n']:>8} {r['errors']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['req_per_s']:>8.1f}   ({args.also_candidates} candidates)")
    prec = roof_precision(args)
    print(roofline_line("raw forward (median)", 1e3 / raw["forward_ms"], raw["flops"], roofs[prec],
                        precision=prec, unit="requests"))
    first = min(args.concurrency)
    print(roofline_line(f"mmrank, concurrency {first}", m["loads"][f"mmrank@{first}"]["req_per_s"],
                        raw["flops"], roofs[prec], precision=prec, unit="requests"))


def roof_precision(args: argparse.Namespace) -> str:
    """The matmul roof the forward is held against: bf16 on CUDA with autocast, else fp32."""
    return "bf16" if args.device.startswith("cuda") and args.bf16 else "fp32"


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return levels


def _no_bf16_config() -> Path:
    """A run config with ``hardware: {bf16: false}`` for the server (``--no-bf16``)."""
    f = tempfile.NamedTemporaryFile("w", prefix="serve-bench-", suffix=".yaml", delete=False)
    f.write("hardware:\n  bf16: false\n")
    f.close()
    return Path(f.name)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a run with encoder/, embeddings/, ctr/ (default: build a small one)")
    p.add_argument("--strategy", default=None, help="CTR strategy (default: the server's choice)")
    p.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-batch-rows", type=int, default=512)
    p.add_argument("--also-candidates", type=int, default=20,
                   help="also measure requests this small at concurrency 16 (0: skip)")
    p.add_argument("--forward-repeats", type=int, default=200, help="raw forwards timed per run")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N | auto: where both servers "
                   "and the raw forward score")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="on CUDA, score in fp32 (default: bf16 autocast, the run config's default)")
    p.add_argument("--concurrency", default="1,16", type=_levels,
                   help="comma-separated concurrency levels (default 1,16; the goals need 1 and 16)")
    p.add_argument("--no-plain", dest="plain", action="store_false",
                   help="leave the plain FastAPI peer out (p99 against the raw forward only)")
    p.add_argument("--repeat", type=int, default=1, help="measure this many times; print each ratio's "
                                                         "mean and spread")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    p.add_argument("--rerank-model", default="armmt", help="also measure /v1/rerank with this re-ranker, on "
                   "its own server after the /v1/rank runs (trained first on a run built here); '' skips it")
    p.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.plain_server:
        return serve_plain(args)

    import contextlib
    import json

    import torch
    from roofline import machine, machine_line

    from mmrank.device import resolve_device
    from mmrank.testing.serving import ServerProcess, build_serving_run
    from mmrank.threads import cores

    dev = resolve_device(args.device)  # a device this machine lacks: fail before building anything

    tmp = None
    if args.run is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve-bench-")
        print("building a small run (synthetic market, small encoder, simtier CTR model) ...", flush=True)
        run = build_serving_run(Path(tmp.name) / "run", n_items=1000, n_users=500, n_impressions=20_000,
                                strategies=("simtier",))
    else:
        run = Path(args.run)
    bodies = payloads(run, 64, args.candidates, args.history)
    on_gpu = dev.type == "cuda"
    roofs = machine(dtypes=(torch.float32, torch.bfloat16) if on_gpu else (torch.float32,), device=dev)
    print(machine_line(roofs, dev))
    if on_gpu:
        print(f"device {args.device}: both servers and the raw forward score on {dev} "
              f"({'bf16 autocast' if args.bf16 else 'fp32'}); the build of each batch runs on the host")
    print(f"run {run}; {args.candidates} candidates x {args.history} behaviour items per request; "
          f"1 uvicorn worker and {args.threads} torch thread(s) per forward thread per server "
          f"(mmrank: {cores()} forward threads; plain: FastAPI's thread pool); "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; {args.repeat} run(s)")
    extra = ("--max-wait-ms", str(args.max_wait_ms), "--max-batch-rows", str(args.max_batch_rows),
             "--rank-concurrency", "1000", "--deadline-ms", "600000", "--device", args.device) + \
        (("--strategy", args.strategy) if args.strategy else ()) + \
        (("--config", str(_no_bf16_config())) if not args.bf16 else ())  # no shedding: latency is measured here
    small = payloads(run, 64, args.also_candidates, args.history, seed=1) if args.also_candidates else None
    runs = []
    with ServerProcess(run, extra_args=extra, threads=args.threads) as srv, \
            (PlainServer(run, args.strategy, args.threads, args.device, args.bf16) if args.plain
             else contextlib.nullcontext()) as plain:
        urls = {"mmrank": srv.url, **({"plain": plain.url} if plain is not None else {})}
        for k in range(args.repeat):
            runs.append(measure(run, args, urls, bodies, small))
            print_repeat(k, runs[-1], args, roofs)
    summary = {name: spread([m["ratios"][name] for m in runs]) for name in runs[0]["ratios"]}
    print(f"\nover {args.repeat} run(s), mean (min - max, std):")
    for c in args.concurrency:
        p99 = spread([m["loads"][f"mmrank@{c}"]["p99_ms"] for m in runs])
        print(f"mmrank p99 at concurrency {c} on {runs[0]['raw']['device']}: {p99['mean']:.2f} ms "
              f"({p99['min']:.2f} - {p99['max']:.2f})")
    if "overhead_c1_p99" in summary:
        o = summary["overhead_c1_p99"]
        print(f"concurrency 1: (mmrank p99 - raw forward p99) / raw forward p99 = {o['mean']:.2f} "
              f"({o['min']:.2f} - {o['max']:.2f}, std {o['std']:.2f}); goal <= {GOAL_OVERHEAD}: "
              f"{'met' if o['mean'] <= GOAL_OVERHEAD else 'not met'}")
    if "speedup_c16" in summary:
        s = summary["speedup_c16"]
        print(f"concurrency 16: mmrank / plain requests/s = {s['mean']:.2f}x ({s['min']:.2f} - {s['max']:.2f}, "
              f"std {s['std']:.2f}); goal >= {GOAL_SPEEDUP}x: {'met' if s['mean'] >= GOAL_SPEEDUP else 'not met'}")
    if "speedup_c16_small" in summary:
        t = summary["speedup_c16_small"]
        print(f"beside the goals, {args.also_candidates} candidates at concurrency 16: mmrank / plain "
              f"requests/s = {t['mean']:.2f}x ({t['min']:.2f} - {t['max']:.2f}, std {t['std']:.2f})")
    doc = {"benchmark": "serve_latency", "goals": {"overhead_c1_p99_max": GOAL_OVERHEAD,
                                                    "speedup_c16_min": GOAL_SPEEDUP},
           "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                      if k not in ("plain_server", "port", "json")},
           "machine": {"cores": os.cpu_count(), "fp32_gflops": roofs["fp32"], "device": str(dev),
                       **({"bf16_gflops": roofs["bf16"]} if "bf16" in roofs else {})},
           "summary": summary, "runs": runs, "rerank": rerank_phase(run, args, built=tmp is not None)}
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        print(f"figures written to {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return doc


if __name__ == "__main__":
    main()
