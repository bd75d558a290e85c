"""The one prepared GPU check (issue 30, part 6): every GPU figure of mmrank, each against a peer or a
limit measured in the same run on the same device, in at most ``--budget-s`` seconds.

Steps, in order, each time-boxed (its commands get at most what is left of the budget, capped per step)
and skipped with a printed reason when too little is left:

1. ``machine``: torch, CUDA, the GPU's name, the date; the bf16 and fp32 matmul rates
   (``benchmarks/roofline.py``) measured now: the limits later steps are compared against;
2. ``pytest-gpu``: ``pytest -m gpu`` over the test files that hold ``gpu`` tests (on a CPU they skip:
   the count is printed);
3. ``din``: ``benchmarks/ctr_throughput.py --device D --full-history``: mmrank's DIN training and
   inference samples/s against DeepCTR-Torch's DIN on the same rows (goal printed: training >= 3x);
4. ``scl``: ``benchmarks/pretrain_throughput.py --device D --sizes 196800``: SCL pairs/s at the paper's
   K = 196,800 and its share of the bf16 matmul rate of step 1 (goal printed: >= 40%);
5. ``catalog``: ``mmrank market generate`` on the carried real-catalog subset (``.gpu/``), the carried
   MiniLM features written into the run's feature cache, then ``mmrank pretrain`` off-the-shelf, scl and
   scl-finetune (image / text Acc@1; goal printed: scl-finetune image Acc@1 >= 2x off-the-shelf) and
   ``mmrank embed`` items/s (photos encoded on the device; an scl encoder on the hash-bow text tower);
6. ``serve``: ``benchmarks/serve_latency.py --device D``: p99 at concurrency 1 and 16 (mmrank against
   the raw forward and a plain FastAPI endpoint, same run).

Every command and its whole output go to ``--out``/``gpu_check.log``; ``--out``/``gpu_check.json`` holds
the summary (device, GPU name, date, each step's status, reason, figures and commands); a table is
printed at the end. A step whose flag is not there yet fails with its error printed, and the check goes
on. Goals are printed, not asserted. Nothing is installed here: on the GPU machine (docs/gpu.md)::

    pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:src python benchmarks/gpu_check.py --device cuda --out $OUT/gpu-check

``--tiny`` shrinks every step, to test the script on a CPU: ``--device cpu --tiny`` runs the machine
step and the gpu tests (they skip) and skips the heavy steps with that reason (seconds);
``--device cpu --tiny --heavy`` runs all six shrunk (several minutes on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
GPU_DIR = ROOT / ".gpu"
STUBS = ROOT / ".whl" / "stubs"
STEPS = ("machine", "pytest-gpu", "din", "scl", "catalog", "serve")
HEAVY = ("din", "scl", "catalog", "serve")  # skipped by --tiny unless --heavy
K_PAPER = 196_800

# Seconds each step may take at most (full, tiny) and the least it needs to be worth starting.
# The full caps add up to the default budget (480 s), so that every step gets its turn.
CAPS = {"machine": (30, 30), "pytest-gpu": (80, 60), "din": (90, 60), "scl": (60, 60),
        "catalog": (150, 120), "serve": (70, 60)}
NEEDS = {"machine": 5, "pytest-gpu": 10, "din": 20, "scl": 15, "catalog": 40, "serve": 20}


class Check:
    """The budget, the log and the summary of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.log", "w", encoding="utf-8")
        self.t0 = time.monotonic()
        self.steps: dict[str, dict] = {}
        self.summary: dict = {"device": args.device, "gpu": None, "tiny": args.tiny, "budget_s": args.budget_s,
                              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "steps": self.steps}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def env(self) -> dict[str, str]:
        """Children: the source tree first, the carried stubs last (a real package wins), offline."""
        env = dict(os.environ)
        parts = [str(ROOT / "src"), str(BENCH)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if STUBS.exists():
            parts.append(str(STUBS))
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env.setdefault("HF_HUB_OFFLINE", "1")
        weights = GPU_DIR / "efficientnet-lite0.pth"
        if weights.exists():
            env.setdefault("MMRANK_EFFNET_WEIGHTS", str(weights))
        return env

    def run(self, step: dict, cmd: list[str], cap: float) -> tuple[int, str]:
        """Run ``cmd`` (logged) for at most ``min(cap, budget left)`` seconds; (exit code, output)."""
        limit = max(1.0, min(cap, self.left()))
        shown = " ".join(str(c) for c in cmd).replace(sys.executable, "python")
        step["commands"].append(shown)
        self.say(f"$ {shown}   (limit {limit:.0f} s)")
        t = time.monotonic()
        # its own process group: a timeout ends the servers and workers it started as well
        p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=self.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            so, se = p.communicate(timeout=limit)
            rc, out = p.returncode, so + se
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            so, se = p.communicate()
            rc = 124
            out = text(so) + text(se) + f"\n[timed out after {limit:.0f} s]"
        self.log.write(out if out.endswith("\n") else out + "\n")
        self.log.write(f"[exit {rc} after {time.monotonic() - t:.1f} s]\n")
        self.log.flush()
        return rc, out

    def step(self, name: str, fn: Callable[[dict, float], None]) -> None:
        cap = CAPS[name][1 if self.args.tiny else 0] * self.args.cap_scale
        rec: dict = {"status": "ok", "reason": "", "seconds": 0.0, "figures": {}, "commands": []}
        self.steps[name] = rec
        self.say(f"\n== {name} ({self.left():.0f} s of the budget left)")
        if name in self.args.skip:
            rec.update(status="skipped", reason="--skip")
        elif self.args.tiny and not self.args.heavy and name in HEAVY:
            rec.update(status="skipped", reason="--tiny: a heavy step (minutes on a small CPU); --heavy runs "
                                                "it shrunk")
        elif self.left() < NEEDS[name]:
            rec.update(status="skipped", reason=f"budget: {self.left():.0f} s left, the step needs at least "
                                                f"{NEEDS[name]} s")
        else:
            t = time.monotonic()
            try:
                fn(rec, cap)
            except Exception as e:  # a step's failure is reported, and the check goes on
                rec.update(status="failed", reason=f"{type(e).__name__}: {e}")
            rec["seconds"] = round(time.monotonic() - t, 1)
        if rec["status"] != "ok":
            self.say(f"-- {name}: {rec['status']}: {rec['reason']}")
        for k, v in rec["figures"].items():
            self.say(f"   {k}: {v}")

    def write(self) -> Path:
        self.summary["seconds"] = round(time.monotonic() - self.t0, 1)
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.summary, indent=1))
        return path


def text(x: str | bytes | None) -> str:
    """A timed-out command's partial output (bytes or str, or None)."""
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


def fail(rec: dict, rc: int, out: str, what: str) -> bool:
    """Mark ``rec`` failed with the output's last lines when ``rc`` is not 0; True when it failed."""
    if rc == 0:
        return False
    tail = " | ".join(line.strip() for line in out.strip().splitlines()[-3:])
    rec.update(status="failed", reason=f"{what}: exit {rc}: {tail}")
    return True


def num(s: str) -> float:
    return float(s.replace(",", ""))


# ---- 1. machine ---------------------------------------------------------------------------------------

def step_machine(chk: Check, rec: dict, cap: float) -> None:
    import torch

    from roofline import matmul_gflops

    dev = torch.device(chk.args.device)
    f = rec["figures"]
    f["torch"] = torch.__version__
    f["cuda"] = torch.version.cuda or "none"
    f["python"] = platform.python_version()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch.cuda.is_available() is False")
        f["gpu"] = torch.cuda.get_device_name(dev)
    else:
        f["gpu"] = "none (cpu)"
    chk.summary["gpu"] = f["gpu"]
    n = 512 if chk.args.tiny else None
    f["bf16_matmul_gflops"] = round(matmul_gflops(torch.bfloat16, n=n, device=dev), 1)
    f["fp32_matmul_gflops"] = round(matmul_gflops(torch.float32, n=n, device=dev), 1)
    chk.summary["bf16_gflops"] = f["bf16_matmul_gflops"]
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ---- 2. pytest -m gpu ---------------------------------------------------------------------------------

def step_pytest(chk: Check, rec: dict, cap: float) -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text(encoding="utf-8"))
    rec["figures"]["files"] = len(files)
    if not files:
        rec.update(status="skipped", reason="no test file holds a gpu-marked test")
        return
    rc, out = chk.run(rec, [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
                            "-rs", *files], cap)
    rec["figures"].update(pytest_counts(out))
    if rc not in (0, 5):  # 5: nothing collected
        fail(rec, rc, out, "pytest -m gpu")


def pytest_counts(out: str) -> dict:
    """passed / failed / skipped / deselected from pytest's last line, or (a run cut short) from its
    per-test ``-v`` lines."""
    summary = [ln for ln in out.splitlines() if re.match(r"^=+ .*\d+ (passed|failed|skipped|deselected|error)", ln)]
    if summary:
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected)", summary[-1])}
    else:
        counts = {}
        for word in re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", out):
            key = {"ERROR": "failed"}.get(word, word.lower())
            counts[key] = counts.get(key, 0) + 1
        counts["cut short"] = 1
    return {k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "deselected")} | \
        ({"note": "cut short: counted from the per-test lines"} if "cut short" in counts else {})


# ---- 3. DIN against DeepCTR-Torch ---------------------------------------------------------------------

RATIO = re.compile(r"ratio (.+?) / DeepCTR-Torch: train ([\d.]+)x\s+inference ([\d.]+)x")
DIN = re.compile(r"^(.+?) DIN\s+train\s+([\d,]+) samples/s\s+inference\s+([\d,]+) samples/s", re.M)


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def step_din(chk: Check, rec: dict, cap: float) -> None:
    a = chk.args
    cmd = [sys.executable, str(BENCH / "ctr_throughput.py"), "--device", a.device, "--full-history",
           "--rows", str(a.din_rows)]
    if a.tiny:
        cmd += ["--warmup", "500", "--chunks", "2", "--simtier-rows", "2000", "--no-compile",
                "--items", "2000", "--users", "2000", "--cats", "50"]
    else:  # the SimTier step-time part at the end is a CPU question: keep it short
        cmd += ["--simtier-rows", "20000"]
    if not have("deepctr_torch"):
        cmd.append("--skip-deepctr")
        rec["reason"] = "DeepCTR-Torch is not installed (.whl/ carries it): no peer, no ratio"
    rc, out = chk.run(rec, cmd, cap)
    rec["figures"].update(parse_din(out))  # what it printed before a failure or a timeout counts too
    if fail(rec, rc, out, "ctr_throughput.py"):
        return
    if not any(k.startswith("goal") for k in rec["figures"]) and not rec["reason"]:
        rec["reason"] = "no ratio line in the output"


def parse_din(out: str) -> dict:
    """samples/s of each DIN runner, the ratios to DeepCTR-Torch and the goal line."""
    f: dict = {}
    for name, tr, inf in DIN.findall(out):
        f[f"{name.strip()} train samples/s"] = num(tr)
        f[f"{name.strip()} inference samples/s"] = num(inf)
    ratios = [(name, float(tr), float(inf)) for name, tr, inf in RATIO.findall(out)]
    for name, tr, inf in ratios:
        f[f"{name} / DeepCTR-Torch train"] = tr
        f[f"{name} / DeepCTR-Torch inference"] = inf
    if ratios:
        best = max(ratios, key=lambda r: r[1])
        f["goal: DIN training >= 3x DeepCTR-Torch"] = f"{best[1]:.2f}x ({best[0]}): " + \
            ("met" if best[1] >= 3.0 else "not met")
    return f


# ---- 4. SCL at K = 196,800 ----------------------------------------------------------------------------

ROOF = re.compile(r"roofline (?P<name>.+?): (?P<mflop>[\d,.]+) MFLOP per \w+ -> limit [\d,]+ \w+/s at the "
                  r"(?P<prec>\w+) matmul roof; measured (?P<rate>[\d,]+) \w+/s = (?P<share>[\d.]+)% of it")


def step_scl(chk: Check, rec: dict, cap: float) -> None:
    a = chk.args
    k = 4096 if a.tiny else K_PAPER
    cmd = [sys.executable, str(BENCH / "pretrain_throughput.py"), "--device", a.device, "--sizes", str(k),
           "--no-reference"]  # (the old dense loss formulation beside it: not a GPU question)
    if a.tiny:
        cmd += ["--steps", "3", "--items", "2000", "--pairs", "4000", "--batch-size", "64"]
    rc, out = chk.run(rec, cmd, cap)
    on_gpu = a.device.startswith("cuda")  # on a CPU the step's FLOPs are fp32: no bf16 share
    f = parse_scl(out, k, chk.summary.get("bf16_gflops") if on_gpu else None)
    rec["figures"].update(f)
    if fail(rec, rc, out, "pretrain_throughput.py"):
        return
    if not f:
        rec.update(status="failed", reason=f"no K={k} row in the output")


def parse_scl(out: str, k: int, bf16_gflops: float | None) -> dict:
    """pairs/s and ms/step at queue size ``k``; the share of the bf16 matmul rate ``bf16_gflops``
    (step 1) from the step's matmul FLOPs per pair (the benchmark's roofline line)."""
    f: dict = {}
    row = re.search(rf"^\s*{k}\s+([\d,.]+)\s+([\d.]+)", out, re.M)
    if not row:
        return f
    pairs_s = num(row.group(1))
    f[f"K={k} pairs/s"] = pairs_s
    f[f"K={k} ms/step"] = float(row.group(2))
    for m in ROOF.finditer(out):
        if m.group("name").strip() != f"K={k}":
            continue
        f[f"K={k} share of its {m.group('prec')} roof (its own line)"] = f"{m.group('share')}%"
        if bf16_gflops:
            share = pairs_s * num(m.group("mflop")) * 1e6 / (bf16_gflops * 1e9)
            f[f"K={k} share of the bf16 matmul rate of step 1"] = f"{share:.1%}"
            f["goal: SCL step >= 40% of the bf16 matmul rate"] = "met" if share >= 0.4 else "not met"
    return f


# ---- 5. the real catalog: market, pretrain, embed -----------------------------------------------------

def mmrank(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmrank.cli", *args]


class CarriedText:
    """all-MiniLM-L6-v2 as looked up from the carried features (``.gpu/minilm_fp16.npy``): it stands in
    for the encoder when the run's MiniLM cache tables are written, so the cache holds the real MiniLM
    features (rounded to float16) under the real encoder's name."""

    name, modality, dim = "minilm", "text", 384

    def __init__(self, gpu: Path) -> None:
        import numpy as np

        texts = json.loads((gpu / "minilm_texts.json").read_text())
        self.row = {t: i for i, t in enumerate(texts)}
        self.feats = np.load(gpu / "minilm_fp16.npy", allow_pickle=False)
        self.missing: set[str] = set()

    def frozen(self, texts: list[str]):
        import numpy as np
        import torch

        rows = []
        for t in texts:
            if t not in self.row:
                self.missing.add(t)
            rows.append(self.row.get(t, 0))
        return torch.from_numpy(self.feats[np.asarray(rows, np.int64)].astype(np.float32))


def write_text_cache(run: Path, gpu: Path) -> tuple[int, int]:
    """The run's ``features/minilm_t0/{items_title,queries_text}`` tables from the carried features,
    keyed exactly as :func:`mmrank.pretrain.data.build_features` keys them. (rows, texts missing)."""
    from mmrank.encoders.cache import cache_key, cached_features, source_fingerprint
    from mmrank.pretrain.data import BOTH, TEXT, item_feature_keys, read_catalog, read_pairs

    enc = CarriedText(gpu)
    catalog = read_catalog(run)
    pairs = read_pairs(run, catalog)
    fp = source_fingerprint(catalog.path)
    key = cache_key("minilm", "text", None, 0)
    _, title_keys = item_feature_keys(catalog.item_ids, catalog.titles)
    texts: dict[str, int] = {}
    for m, q in zip(pairs.modality, pairs.query_text):
        if m in (TEXT, BOTH):
            texts.setdefault(q, len(texts))
    text_list = list(texts)
    if enc.missing or not all(t in enc.row for t in catalog.titles + text_list):
        enc.missing |= {t for t in catalog.titles + text_list if t not in enc.row}
        return 0, len(enc.missing)

    def build():
        return enc, list

    cached_features(build, key, title_keys, lambda a, z: catalog.titles[a:z], run / "features", "items_title", fp)
    cached_features(build, key, text_list, lambda a, z: text_list[a:z], run / "features", "queries_text", fp)
    return len(title_keys) + len(text_list), 0


def acc(run: Path, out: str) -> dict:
    """Acc@1 image / text of the variant just trained: ``R/encoder/metrics.json`` (each
    ``mmrank pretrain`` writes it), else the stage's printed line."""
    p = run / "encoder" / "metrics.json"
    if p.exists():
        a1 = json.loads(p.read_text()).get("acc@1", {})
        if a1:
            return {k: round(float(v), 4) for k, v in a1.items() if v is not None}
    m = re.search(r"acc@1 image=([\d.]+) text=([\d.]+)", out)
    return {"image": float(m.group(1)), "text": float(m.group(2))} if m else {}


def step_catalog(chk: Check, rec: dict, cap: float) -> None:
    a = chk.args
    f = rec["figures"]
    catalog = GPU_DIR / "items.parquet"
    if not (catalog.exists() and (GPU_DIR / "minilm_fp16.npy").exists()):
        rec.update(status="skipped", reason="no .gpu/items.parquet + MiniLM features: run "
                                            "benchmarks/gpu_prepare.py on a machine with ../shared and PyPI")
        return
    manifest = json.loads((GPU_DIR / "manifest.json").read_text()) if (GPU_DIR / "manifest.json").exists() else {}
    t_end = time.monotonic() + min(cap, chk.left())
    left = lambda: t_end - time.monotonic()  # noqa: E731
    run = chk.out / "catalog-run"
    items = a.catalog_items or manifest.get("items", 10_000)
    # the prepared market (its size preset) when the prepared subset is asked for, else a tiny one
    size = manifest.get("size", "small") if (not a.tiny or int(items) == manifest.get("items")) else "tiny"
    seed = manifest.get("seed", 7)
    if not (run / "data" / "manifest.json").exists():
        t = time.monotonic()
        rc, out = chk.run(rec, mmrank("market", "generate", "--run", str(run), "--seed", str(seed), "--items",
                                      str(items), "--size", size, "--catalog", str(catalog)), left())
        if fail(rec, rc, out, "market generate"):
            return
        f["market generate s"] = round(time.monotonic() - t, 1)
    tables = json.loads((run / "data" / "lineage.json").read_text()).get("inputs", {})
    if manifest.get("market_tables") and int(items) == manifest.get("items") and size == manifest.get("size"):
        same = tables == manifest["market_tables"]
        f["market tables as prepared"] = "identical" if same else "differ (queries may be missing below)"
    rows, missing = write_text_cache(run, GPU_DIR)
    text_encoder = "minilm"
    if missing:
        text_encoder = "hash-bow"
        f["text encoder"] = f"hash-bow: {missing} texts are not in the carried MiniLM features"
    else:
        f["text encoder"] = f"minilm (carried features, {rows:,} cached rows written)"
    common = ["--run", str(run), "--device", a.device, "--text-encoder", text_encoder,
              "--image-size", str(a.image_size)]
    if a.tiny:
        common += ["--epochs", "1", "--max-steps", "3", "--batch-size", "64", "--queue-size", "256"]
    accs = {}
    for variant in ("off-the-shelf", "scl", "scl-finetune"):
        if left() < 10:
            f[f"{variant}"] = f"skipped: {left():.0f} s left of the step"
            continue
        t = time.monotonic()
        extra = ["--variant", variant]
        if variant == "scl-finetune":  # the image network end to end; the text tower stays frozen on its
            cfg = chk.out / "finetune.yaml"  # cached features (MiniLM's weights are not carried)
            cfg.write_text("pretrain:\n  finetune_text_layers: 0\n")
            extra += ["--config", str(cfg)]
            f["scl-finetune text"] = "frozen (finetune_text_layers: 0: the MiniLM weights are not carried)"
        rc, out = chk.run(rec, mmrank("pretrain", *common, *extra), left())
        if rc != 0:
            tail = " | ".join(out.strip().splitlines()[-2:])
            f[f"{variant}"] = f"failed (exit {rc}): {tail}"
            continue
        accs[variant] = acc(run, out)
        f[f"{variant} s"] = round(time.monotonic() - t, 1)
        f[f"{variant} Acc@1"] = accs[variant] or "not found in the metrics JSON"
    ots, sc = accs.get("off-the-shelf", {}).get("image"), accs.get("scl", {}).get("image")
    if ots and sc:
        f["scl / off-the-shelf image Acc@1"] = f"{sc / ots:.2f}x"
    if left() >= 20:
        embed_items_per_s(chk, rec, run, common, left)
    else:
        f["embed"] = f"skipped: {left():.0f} s left of the step"
    ots, ft = accs.get("off-the-shelf", {}).get("image"), accs.get("scl-finetune", {}).get("image")
    if ots and ft:
        f["scl-finetune / off-the-shelf image Acc@1"] = f"{ft / ots:.2f}x: " + \
            ("met (goal >= 2x)" if ft / ots >= 2 else "not met (goal >= 2x)")
    failed = [k for k, v in f.items() if isinstance(v, str) and v.startswith("failed")]
    if failed:
        rec.update(status="failed", reason="; ".join(f"{k} {f[k]}" for k in failed))


def embed_items_per_s(chk: Check, rec: dict, run: Path, common: list[str], left: Callable[[], float]) -> None:
    """``mmrank embed`` items/s with every photo encoded now on the device: an scl encoder with the
    ``hash-bow`` text tower (``mmrank embed`` builds the encoder's text tower even when every item's
    features are in the pre-training cache, and MiniLM's weights are not carried), trained on a copy of
    the run's data whose feature cache is then removed."""
    import shutil

    f = rec["figures"]
    erun = chk.out / "embed-run"
    shutil.rmtree(erun, ignore_errors=True)
    shutil.copytree(run / "data", erun / "data")
    for d in (run / "features").glob("*"):  # the image features the variants cached (same items table)
        if d.is_dir() and not d.name.startswith("minilm"):
            shutil.copytree(d, erun / "features" / d.name)
    args = [x if x != "minilm" else "hash-bow" for x in common]
    args[args.index("--run") + 1] = str(erun)
    rc, out = chk.run(rec, mmrank("pretrain", *args, "--variant", "scl"), left())
    if rc != 0:
        f["embed"] = f"failed (exit {rc}, its scl hash-bow encoder): {' | '.join(out.strip().splitlines()[-2:])}"
        return
    shutil.rmtree(erun / "features", ignore_errors=True)
    t = time.monotonic()
    rc, out = chk.run(rec, mmrank("embed", "--run", str(erun), "--device", chk.args.device), left())
    if rc != 0:
        f["embed"] = f"failed (exit {rc}): {' | '.join(out.strip().splitlines()[-2:])}"
        return
    secs = time.monotonic() - t
    m = re.search(r"([\d,.]+)\s*items/s", out)
    if m:
        rate: object = num(m.group(1))
    else:
        import pyarrow.parquet as pq

        rate = f"{pq.read_metadata(erun / 'data' / 'items.parquet').num_rows / secs:,.0f} (items / wall s)"
    f["embed items/s (scl, hash-bow text, photos encoded now)"] = rate
    line = next((x for x in out.splitlines() if "items/s" in x), "")
    if line:  # what was encoded now (and what came from a cache)
        f["embed"] = line.strip().split(": ", 1)[-1]


# ---- 6. serve p99 -------------------------------------------------------------------------------------

def step_serve(chk: Check, rec: dict, cap: float) -> None:
    a = chk.args
    js = chk.out / "serve_latency.json"
    cmd = [sys.executable, str(BENCH / "serve_latency.py"), "--device", a.device, "--concurrency", "1,16",
           "--rerank-model", "", "--json", str(js)]
    cmd += (["--requests", "40", "--forward-repeats", "20", "--also-candidates", "0"] if a.tiny
            else ["--requests", "500"])
    rc, out = chk.run(rec, cmd, cap)
    rec["figures"].update(parse_serve(out))
    fail(rec, rc, out, "serve_latency.py")


def parse_serve(out: str) -> dict:
    """p99 of each server at each concurrency level, the raw forward's p99 and the goal lines."""
    f: dict = {}
    raw = re.search(r"^raw forward \(model only.*?p99 ([\d.]+) ms", out, re.M)
    if raw:
        f["raw forward p99 ms"] = float(raw.group(1))
    for name, conc, p99 in re.findall(r"^(mmrank|plain)\s+(\d+)\s+\d+\s+\d+\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s*$",
                                      out, re.M):
        f[f"{name} p99 ms at concurrency {conc}"] = float(p99)
    for line in out.splitlines():
        if line.startswith(("concurrency 1:", "concurrency 16:")):
            f[line.split(":")[0] + " (goal)"] = line.split(":", 1)[1].strip()
    return f


# ---- the table ------------------------------------------------------------------------------------------

def table(chk: Check) -> str:
    lines = [f"GPU check: {chk.summary.get('gpu', '?')}, device {chk.args.device}, {chk.summary['date']}, "
             f"{chk.summary.get('seconds', 0):.0f} s of {chk.args.budget_s:.0f}",
             f"{'step':<11} {'status':<8} {'s':>6}  figures / reason"]
    for name in STEPS:
        r = chk.steps.get(name, {})
        figs = "; ".join(f"{k} {v}" for k, v in r.get("figures", {}).items())
        text = " / ".join(x for x in (r.get("reason", ""), figs) if x)
        lines.append(f"{name:<11} {r.get('status', '-'):<8} {r.get('seconds', 0):>6.1f}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--tiny", action="store_true", help="shrink every step (a test of the script)")
    ap.add_argument("--out", default="gpu-check", help="folder for gpu_check.log, gpu_check.json, runs")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole check's wall-clock budget")
    ap.add_argument("--heavy", action="store_true", help="with --tiny: run the heavy steps too (shrunk)")
    ap.add_argument("--cap-scale", type=float, default=1.0, help="multiply each step's own time cap (a slow "
                    "or loaded CPU); the budget still bounds the whole")
    ap.add_argument("--skip", default="", help=f"comma-separated steps to skip ({', '.join(STEPS)})")
    ap.add_argument("--din-rows", type=int, default=None, help="rows of the DIN benchmark "
                    "(default 200,000; tiny 4,000)")
    ap.add_argument("--catalog-items", type=int, default=None, help="catalog subset of step 5 (default: "
                    "all carried; tiny 300)")
    ap.add_argument("--image-size", type=int, default=80, help="photo side in step 5 (the photos are 60x80)")
    args = ap.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(STEPS)
    if unknown:
        ap.error(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(STEPS)}")
    args.din_rows = args.din_rows or (4_000 if args.tiny else 200_000)
    if args.tiny:
        args.catalog_items = args.catalog_items or 300
        args.image_size = min(args.image_size, 32)
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chk = Check(args)
    chk.say(f"gpu_check: device {args.device}, budget {args.budget_s:.0f} s, out {chk.out}, "
            f"{chk.summary['date']}" + (" (tiny)" if args.tiny else ""))
    for name, fn in (("machine", step_machine), ("pytest-gpu", step_pytest), ("din", step_din),
                     ("scl", step_scl), ("catalog", step_catalog), ("serve", step_serve)):
        chk.step(name, lambda rec, cap, fn=fn: fn(chk, rec, cap))
        chk.write()
    path = chk.write()
    chk.say("\n" + table(chk))
    chk.say(f"summary: {path}; log: {chk.out / 'gpu_check.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
