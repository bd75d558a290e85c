"""`mmrank report docs`: the result tables of ``docs/`` and the README, generated from runs' JSON.

A run's figures live in the JSON its commands wrote (``R/data/manifest.json``, ``R/report/results.json``
from ``mmrank demo``, ``R/pretrain/compare.json`` and ``compare_detail.json``, ``R/ctr/compare.json``,
``R/rerank/compare.json``). ``mmrank report docs --run LABEL=R`` copies those files, as they are, to
``docs/results/LABEL/`` (same relative paths; committed, small), then renders every generated block
of ``README.md`` and ``docs/*.md`` from the copies under ``docs/results/``. With no ``--run`` it only
re-renders. So no figure is typed by hand, and a figure that changed shows as a diff of both the JSON
and the page. A benchmark's JSON (``benchmarks/cold_start.py --json F``) is copied with
``--bench NAME=F`` to ``docs/results/bench/NAME.json``.

A generated block is the text between ``<!-- generated: KEY -->`` and ``<!-- end generated -->``;
the prose around it is written by hand and left alone. ``KEY`` is one of :data:`BLOCKS`. A known run
label (:data:`KNOWN_RUNS`) whose copies are absent renders as a note naming the commands that make
it and where its last figures are. The off-policy study's runs (:data:`OFFPOLICY_RUNS`) have their own
blocks (``readme-offpolicy``, ``offpolicy-estimators``, ``offpolicy-learners``, from
``rerank/compare.json``'s ``offpolicy`` key and the manifest's policy); the MOON2.0 study's
(:data:`MOON_RUNS`) the ``pretrain-filter`` block. Both (:data:`STUDY_RUNS`) appear in a stage's block
only where they have that stage's figures.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmrank.data.config import SIZES
from mmrank.errors import MMRankError

# What a run's commands write, relative to the run directory; copied under docs/results/<label>/.
RUN_FILES = ("data/manifest.json", "report/results.json", "pretrain/compare.json",
             "pretrain/compare_detail.json", "pretrain/filter_report.json", "ctr/compare.json",
             "rerank/compare.json", "analysis/exchange_rate.json", "analysis/scaling.json",
             "ctr/follow/freshness.json", "creative/compare.json")
# Plots copied beside them (when the run has them) and shown by the pages that render their JSON.
RUN_PLOTS = ("analysis/exchange_rate.png", "analysis/scaling.png")
LAST_FIGURES = "`git show 49d227b:README.md`"

# The runs the pages describe, in page order: a title, and the commands that make the run.
KNOWN_RUNS: dict[str, dict[str, str]] = {
    "demo": {
        "title": "`make demo` (`runs/demo`)",
        "commands": "make demo    # = mmrank demo --out runs/demo --size small\n"
                    "mmrank report docs --run demo=runs/demo",
    },
    "small": {
        "title": "Small market, several training seeds (`runs/small`)",
        "commands": "mmrank market generate --run runs/small --size small --seed 0\n"
                    "mmrank pretrain compare --run runs/small --config cfg.yaml --seeds 3   "
                    "# cfg (the demo's budget): pretrain: {epochs: 3, batch_size: 256, queue_size: 4096, "
                    "hidden: 256, nested_dims: [64, 256], lr: 0.002}\n"
                    "mmrank ctr compare --run runs/small --seeds 3 --curve 0,2,4 --epochs-curve 3 --threads 1\n"
                    "mmrank rerank compare --run runs/small --seeds 3 --beam 3 --threads 1\n"
                    "mmrank report docs --run small=runs/small",
    },
    "default": {
        "title": "Default market (`runs/m7`)",
        "commands": "mmrank market generate --run runs/m7 --seed 7\n"
                    "mmrank pretrain compare --run runs/m7 --config cfg.yaml --seeds 3   "
                    "# cfg: pretrain: {epochs: 6, batch_size: 512, queue_size: 16384, hidden: 256, "
                    "lr: 0.002, nested_dims: [64, 256]}\n"
                    "mmrank ctr compare --run runs/m7 --seeds 3 --curve '' --threads 1\n"
                    "mmrank rerank compare --run runs/m7 --seeds 3 --threads 1 "
                    "--models logged,dnn,armmt,armmt-concat,mmoe,seqmd,seqmd-no-mask\n"
                    "mmrank report docs --run default=runs/m7",
    },
    "real": {
        "title": "Real catalog, behaviour simulated (`runs/real`)",
        "commands": "mmrank market generate --run runs/real --seed 7 "
                    "--catalog ../shared/data/fashion-catalog/items.parquet\n"
                    "mmrank pretrain compare --run runs/real --config cfg.yaml --image-size 80 --seeds 3\n"
                    "mmrank ctr compare --run runs/real --seeds 3 --curve '' --threads 1\n"
                    "mmrank rerank compare --run runs/real --seeds 3 --threads 1 "
                    "--models logged,dnn,armmt,armmt-concat,mmoe,seqmd,seqmd-no-mask\n"
                    "mmrank report docs --run real=runs/real",
    },
}


def _cf_run(label: str, exploration: str, behaviour: str, about: str, market: str = "small market",
            generate: str = "--size small", dim: int = 32) -> dict[str, str]:
    yaml = f"policy-{label}.yaml"
    run = f"runs/{label}"
    return {
        "title": f"Off-policy study: {market}, {about} (`{run}`)",
        "commands": f"cat > {yaml} <<'EOF'\n"
                    f"market: {{behaviour: {{policy_temperature: 0.5, policy_exploration: {exploration}, "
                    f"policy_marginal_samples: 64{behaviour}}}}}\n"
                    "EOF\n"
                    f"mmrank market generate --run {run} {generate} --config {yaml}\n"
                    f"mkdir -p {run}/rerank && echo '{{\"encoder\": \"tiny\", \"dim\": {dim}}}' "
                    f"> {run}/rerank/encoder.json   # the tiny representation, no pre-training\n"
                    f"mmrank rerank compare --run {run} --seeds 3 --threads 1 "
                    "--models logged,prod-order,dnn,dnn-ips,armmt,armmt-ips,prm,seqmd\n"
                    f"mmrank report docs --run {label}={run}",
    }


# The off-policy study's runs (issue 23; docs/rerank.md): a stochastic production policy (Plackett-Luce,
# temperature 0.5) at three exploration shares, a control with the list effects off, and the default market and
# the real catalog at exploration 0.1 (the acceptance runs).
OFFPOLICY_RUNS: dict[str, dict[str, str]] = {
    "cf-e0": _cf_run("cf-e0", "0.0", "", "exploration 0"),
    "cf-e01": _cf_run("cf-e01", "0.1", "", "exploration 0.1"),
    "cf-e03": _cf_run("cf-e03", "0.3", "", "exploration 0.3"),
    "cf-control": _cf_run("cf-control", "0.1", ", substitution: 0.0, region_price_sensitivity: [0.0]",
                          "exploration 0.1, no price comparison or substitution"),
    "cf-default": _cf_run("cf-default", "0.1", "", "exploration 0.1", market="default market",
                          generate="--seed 7", dim=64),
    "cf-real": _cf_run("cf-real", "0.1", "", "exploration 0.1",
                       market="real catalog (20,000-item subset), behaviour simulated",
                       generate="--seed 7 --catalog ../shared/data/fashion-catalog/items.parquet", dim=64),
}


# The MOON2.0 study's runs (issue 20; docs/pretrain.md): the switches on a small market, and the sample
# filter on one with noisy pairs.
MOON_RUNS: dict[str, dict[str, str]] = {
    "moon-small": {
        "title": "MOON2.0 switches, small market (`runs/moon-small`)",
        "commands": "mmrank market generate --run runs/moon-small --size small\n"
                    "mmrank pretrain compare --run runs/moon-small --seeds 3 "
                    "--variants popularity,off-the-shelf,scl,moe,align,coaug,filter,moon2\n"
                    "mmrank report docs --run moon-small=runs/moon-small",
    },
    "moon-default": {
        "title": "Default market, seed 7 (`runs/moon-default`)",
        "commands": "mmrank market generate --run runs/moon-default --seed 7\n"
                    "mmrank pretrain compare --run runs/moon-default --config cfg.yaml --seeds 3 "
                    "--variants popularity,off-the-shelf,scl,moe,align,coaug,filter,moon2   "
                    "# cfg: the default run's (pretrain: {epochs: 6, batch_size: 512, queue_size: 16384, "
                    "hidden: 256, lr: 0.002, nested_dims: [64, 256]})\n"
                    "mmrank embed --run runs/moon-default\n"
                    "mmrank ctr compare --run runs/moon-default --seeds 3 --curve '' --threads 1 "
                    "--strategies id,simtier+make,sid,sid+simtier+make,post,post+simtier+make,debias\n"
                    "mmrank ctr follow --run runs/moon-default --source replay --strategies simtier --freshness "
                    "--seeds 1 --threads 1\n"
                    "mmrank analyze exchange-rate --run runs/moon-default --points off-the-shelf,scl,moe,align,coaug,"
                    "filter,scl@e1 --max-train-rows 200000 --make-epochs 2 --threads 1\n"
                    "mmrank analyze scaling --run runs/moon-default --max-train-rows 100000 --make-epochs 2 "
                    "--pretrain-epochs 3 --threads 1\n"
                    "mmrank pretrain compare --run runs/moon-default --config cfg.yaml --seeds 3 --variants "
                    "popularity,off-the-shelf,scl,moe,align,coaug,filter,moon2,click-visual   # adds click-visual\n"
                    "mmrank ctr compare --run runs/moon-default --seeds 3 --curve '' --threads 1 "
                    "--strategies click-visual --add\n"
                    "mmrank report docs --run moon-default=runs/moon-default",
    },
    "moon-real": {
        "title": "The real catalog, all 44,072 items, seed 7 (`runs/moon-real`)",
        "commands": "mmrank market generate --run runs/moon-real --seed 7 --items 44072 "
                    "--catalog ../shared/data/fashion-catalog/items.parquet\n"
                    "mmrank pretrain compare --run runs/moon-real --config cfg.yaml --image-size 80 --seeds 3 "
                    "--variants popularity,off-the-shelf,scl,moe,align,coaug,filter,moon2   # cfg: moon-default's\n"
                    "cp -r runs/moon-real/pretrain/scl runs/moon-real/encoder   # what compare installs when it ends\n"
                    "mmrank embed --run runs/moon-real\n"
                    "mmrank sid build --run runs/moon-real\n"
                    "mmrank posttrain --run runs/moon-real\n"
                    "mmrank ctr compare --run runs/moon-real --seeds 3 --curve '' --threads 1 "
                    "--strategies id,simtier+make,sid,sid+simtier+make,post,post+simtier+make\n"
                    "mmrank pretrain compare --run runs/moon-real --config cfg.yaml --image-size 80 --seeds 3 "
                    "--variants popularity,off-the-shelf,scl,moe,align,coaug,filter,moon2,click-visual   "
                    "# adds click-visual\n"
                    "mmrank ctr compare --run runs/moon-real --seeds 3 --curve '' --threads 1 "
                    "--strategies click-visual,debias --add\n"
                    "mmrank report docs --run moon-real=runs/moon-real",
    },
    "moon-noisy": {
        "title": "The sample filter on a small market with 20% noisy pairs (`runs/moon-noisy`)",
        "commands": "echo 'market: {noisy_pair_share: 0.2}' > noisy.yaml\n"
                    "mmrank market generate --run runs/moon-noisy --size small --seed 0 --config noisy.yaml\n"
                    "mmrank pretrain compare --run runs/moon-noisy --seeds 3 --variants scl,filter\n"
                    "mmrank report filter --run runs/moon-noisy   # precision against the truth\n"
                    "mmrank report docs --run moon-noisy=runs/moon-noisy",
    },
}


def _ctr_run(label: str, about: str, build: str, strategies: str) -> dict[str, Any]:
    run = f"runs/{label}"
    return {
        "title": f"{about}, small market (`{run}`)",
        "commands": f"mmrank demo --run {run} --size small   # the small market and the demo's SCL encoder\n"
                    + (f"{build}\n" if build else "")
                    + f"mmrank ctr compare --run {run} --seeds 3 --strategies {strategies} --curve '' --threads 1\n"
                    f"mmrank report docs --run {label}={run}",
        "files": ("ctr/compare.json",),    # the demo's other tables are the demo run's
    }


# The CTR strategies beyond the paper's six (issues 21, 22, 25), each on a copy of the demo's run.
CTR_RUNS: dict[str, dict[str, Any]] = {
    "sid-small": _ctr_run("sid-small", "Semantic IDs", "mmrank sid build --run runs/sid-small",
                          "id,simtier+make,sid,sid+simtier+make"),
    "post-small": _ctr_run("post-small", "Post-training", "mmrank posttrain --run runs/post-small",
                           "id,simtier,simtier+make,post,post+simtier+make"),
    "debias-small": _ctr_run("debias-small", "Visual debiasing", "", "id,simtier+make,debias"),
}

# MOON's analyses (issue 21; docs/analyze.md) on a copy of the demo's run.
ANALYSIS_RUNS: dict[str, dict[str, Any]] = {
    "an-small": {
        "title": "Exchange rate and scaling, small market (`runs/an-small`)",
        "commands": "mmrank demo --run runs/an-small --size small   # the small market and its Table 2 encoders\n"
                    "mmrank analyze exchange-rate --run runs/an-small --seeds 2 --make-epochs 2 "
                    "--max-train-rows 120000 --points clip-e,scl,scl-no-triplet,scl-no-triplet-no-moco,"
                    "scl-no-logq,scl@e1,scl@d16,scl@f0.25,off-the-shelf\n"
                    "mmrank analyze scaling --run runs/an-small --seeds 1 --make-epochs 2 --max-train-rows 120000\n"
                    "mmrank report docs --run an-small=runs/an-small",
        "files": ("analysis/exchange_rate.json", "analysis/scaling.json"),
    },
}

# Creatives and their selector (issue 22; docs/creative.md) on a copy of the demo's market.
CREATIVE_RUNS: dict[str, dict[str, Any]] = {
    "creative-small": {
        "title": "Creatives, small market (`runs/creative-small`)",
        "commands": "mmrank market generate --run runs/creative-small --size small --seed 0\n"
                    "mmrank creative generate --run runs/creative-small\n"
                    "mmrank creative compare --run runs/creative-small --seeds 3\n"
                    "mmrank report docs --run creative-small=runs/creative-small",
        "files": ("creative/compare.json",),
    },
}

# Study runs appear in a page only where they have that page's figures (not as "nothing yet" notes).
STUDY_RUNS: dict[str, dict[str, Any]] = {**MOON_RUNS, **OFFPOLICY_RUNS, **CTR_RUNS, **ANALYSIS_RUNS,
                                          **CREATIVE_RUNS}

_BEGIN = re.compile(r"<!-- generated: ([a-z0-9-]+) -->\n")
_END = "<!-- end generated -->"
_LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


# --------------------------------------------------------------------------------------------------
# reading docs/results/


class Results:
    """The copied JSON under ``docs/results/``: ``runs[label][relative path] = parsed JSON``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: dict[str, dict[str, Any]] = {}
        self.bench: dict[str, Any] = {}
        if not root.exists():
            return
        for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "bench"):
            files = {rel: _read(d / rel) for rel in RUN_FILES if (d / rel).exists()}
            if files:
                self.runs[d.name] = files
        for f in sorted((root / "bench").glob("*.json")) if (root / "bench").exists() else []:
            self.bench[f.stem] = _read(f)

    def labels(self) -> list[str]:
        """Known labels first (page order), then the off-policy study's, then the others sorted."""
        named = [*KNOWN_RUNS, *STUDY_RUNS]
        return [k for k in named if k in self.runs] + sorted(k for k in self.runs if k not in named)

    def get(self, label: str, rel: str) -> Any:
        return self.runs.get(label, {}).get(rel)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise MMRankError(f"{path}: not valid JSON ({err})") from None


# --------------------------------------------------------------------------------------------------
# formatting


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pm(stat: dict | None, digits: int = 4, seeds: int = 2) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` block; the mean alone for one seed or no std."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    sd = stat.get("std")
    return _f(stat["mean"], digits) if sd is None or seeds < 2 else f"{_f(stat['mean'], digits)} ± {_f(sd, digits)}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _table(head: list[str], rows: Iterable[list[str]], align: str = "---:") -> list[str]:
    return (["| " + " | ".join(head) + " |", "|---|" + "|".join([align] * (len(head) - 1)) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _absent(label: str, what: str) -> list[str]:
    where = (f"the commands in [runs.md](runs.md#{label})" if label in KNOWN_RUNS or label in STUDY_RUNS
             else f"`mmrank report docs --run {label}=R`")
    last = ("" if label in STUDY_RUNS    # studies added since: no earlier figures
            else f"; the last figures measured are in {LAST_FIGURES}")
    return [f"*No {what} in `docs/results/{label}/`.* Make it with {where}{last}.", ""]


def runs_rows(res: Results) -> list[str]:
    """Every known run: the commands that make it, and whether docs/results holds it."""
    out: list[str] = []
    for label, known in {**KNOWN_RUNS, **STUDY_RUNS}.items():
        have = ", ".join(f"`{rel}`" for rel in res.runs.get(label, {})) or "nothing yet"
        out += [f'<a id="{label}"></a>', f"### {known['title']}", "", "```bash", *known["commands"].splitlines(),
                "```", "", f"In `docs/results/{label}/`: {have}.", ""]
    others = [k for k in res.labels() if k not in KNOWN_RUNS and k not in STUDY_RUNS]
    if others:
        out += ["Other runs in `docs/results/`: " + ", ".join(f"`{k}`" for k in others) + ".", ""]
    return out


def _source(label: str, rel: str, writer: str) -> str:
    return f"Source: `docs/results/{label}/{rel}`, written by `{writer}`."


# --------------------------------------------------------------------------------------------------
# blocks: one function per stage, over every run label


def _sections(res: Results, rel: str, what: str,
              render: Callable[[Results, str], list[str]], labels: Iterable[str] | None = None) -> list[str]:
    """One ``### title`` section per run label (known labels always, absent ones as a note)."""
    out: list[str] = []
    if labels is None:      # the off-policy study's runs only where they have this stage's figures
        labels = [k for k in dict.fromkeys([*KNOWN_RUNS, *res.labels()])
                  if k not in STUDY_RUNS or res.get(k, rel) is not None]
    labels = list(labels)
    for label in labels:
        title = {**KNOWN_RUNS, **STUDY_RUNS}.get(label, {}).get("title", f"run `{label}`")
        out += [f"### {title}", ""]
        out += render(res, label) if res.get(label, rel) is not None else _absent(label, what)
    return out


def market_rows(res: Results, label: str) -> list[str]:
    man = res.get(label, "data/manifest.json")
    head = ["surface", "oracle AUC", "attainable AUC", "CTR", "cart / click", "purchase / cart",
            "history median / p90", "top-1% items' share", "columns R²"]
    rows = []
    for name, s in man.get("surfaces", {}).items():
        r, h = s.get("rates", {}), s.get("history_len", {})
        rows.append([name, _f(s.get("oracle_auc")), _f(s.get("attainable_auc")),
                     "n/a" if r.get("click") is None else f"{100 * r['click']:.2f}%",
                     _f(r.get("cart_per_click"), 3), _f(r.get("purchase_per_cart"), 3),
                     f"{_f(h.get('median'), 0)} / {_f(h.get('p90'), 0)}", _f(s.get("top1pct_share"), 3),
                     _f(s.get("columns_r2"), 3)])
    counts = ", ".join(f"{k} {v:,}" for k, v in man.get("counts", {}).items() if isinstance(v, int))
    return [f"{man.get('source', '')}; seed {man.get('seed')}; {counts}.", "", *_table(head, rows), "",
            _source(label, "data/manifest.json", "mmrank market generate"), ""]


def _pretrain_std(res: Results, label: str) -> dict[str, Any]:
    detail = res.get(label, "pretrain/compare_detail.json") or {}
    return {v: r.get("std") for v, r in detail.get("variants", {}).items() if r.get("std")}


def pretrain_rows(res: Results, label: str) -> list[str]:
    table = res.get(label, "pretrain/compare.json")
    std = _pretrain_std(res, label)
    detail = res.get(label, "pretrain/compare_detail.json") or {}
    seeds = max([r.get("seeds", 1) for r in detail.get("variants", {}).values()] or [1])
    head = ["variant", "Acc@1 image", "Acc@1 text", "Acc@5 image", "Acc@5 text"]
    rows = []
    for v, r in table.items():
        def cell(acc: str, m: str, v: str = v, r: dict = r) -> str:
            sd = (std.get(v) or {}).get(acc, {}).get(m)
            return _pm({"mean": r[acc][m], "std": sd}, seeds=seeds)
        rows.append([v, cell("acc@1", "image"), cell("acc@1", "text"), cell("acc@5", "image"),
                     cell("acc@5", "text")])
    note = (f"Mean ± std over {seeds} training seeds (the reference rows train nothing)." if seeds > 1
            else "One training seed.")
    return [note, "", *_table(head, rows), "",
            _source(label, "pretrain/compare.json", "mmrank pretrain compare")
            + (" Std: `pretrain/compare_detail.json`." if std else ""), ""]


def filter_rows(res: Results, label: str) -> list[str]:
    """The sample filter against the market's noisy pairs (``pretrain/filter_report.json``)."""
    rep = res.get(label, "pretrain/filter_report.json")
    rows = []
    for row, r in rep["rows"].items():
        for e in [*r["epochs"], {**r["all"], "epoch": "all"}]:
            rows.append([f"`{row}`", str(e["epoch"]), f"{e['dropped']:,}", _f(e.get("precision"), 3),
                         _f(e.get("recall"), 3)])
    acc = [[f"`{v}`", *(_pm(a[m], 4, 3) for m in ("image", "text"))] for v, a in rep.get("acc@1", {}).items()]
    return [f"Noise share of the training pairs (the truth's `noisy_pairs.parquet`): "
            f"{_f(rep.get('noise_share'), 3)}. Per filtering row (`R/pretrain/<row>/dropped.json`, one seed "
            "directory each) and epoch: pairs dropped, precision (share of them that are noise), recall "
            "(share of the noise dropped).", "",
            *_table(["row", "epoch", "dropped", "precision", "recall"], rows), "",
            "Acc@1 of the rows (mean ± std over seeds):", "",
            *_table(["row", "Acc@1 image", "Acc@1 text"], acc), "",
            _source(label, "pretrain/filter_report.json", "mmrank report filter"), ""]


def _ctr_strategies(comp: dict) -> list[str]:
    return [k for k, v in comp.items() if isinstance(v, dict) and "gauc" in v and "auc" in v]


def ctr_rows(res: Results, label: str) -> list[str]:
    comp = res.get(label, "ctr/compare.json")
    strategies = _ctr_strategies(comp)
    head = ["strategy", "AUC", "GAUC", "LogLoss", "ΔAUC", "ΔGAUC", "ΔGAUC group 1", "ΔGAUC group 8",
            "ΔGAUC new items"]
    rows = []
    for s in strategies:
        r, rel = comp[s], comp[s].get("relative") or {}
        g = rel.get("groups_gauc") or [None]
        n = comp.get("seeds") or 1
        rows.append([s, _pm(r["auc"], seeds=n), _pm(r["gauc"], seeds=n), _pm(r["logloss"], seeds=n),
                     _pct(rel.get("auc")),
                     _pct(rel.get("gauc")), _pct(g[0]), _pct(g[-1]), _pct(rel.get("new_items_gauc"))])
    out = [f"{comp.get('seeds')} seed(s); {comp.get('n_train', 0):,} training and {comp.get('n_test', 0):,} "
           f"test impressions; MAKE pre-trained {comp.get('make_epochs')} epochs; representations: "
           f"{comp.get('representations')}; oracle AUC {_f(comp.get('oracle_auc'))}.", "",
           *_table(head, rows), ""]
    groups = [s for s in strategies if (comp[s].get("relative") or {}).get("groups_logloss") and s != "id"]
    if groups:
        n = len(comp[groups[0]]["relative"]["groups_logloss"])
        out += ["LogLoss change against `id` by item-frequency group, G1 rarest (Figure 6b; negative is "
                "better):", "",
                *_table(["strategy", *(f"G{i}" for i in range(1, n + 1))],
                        [[s, *(_pct(x) for x in comp[s]["relative"]["groups_logloss"])] for s in groups]), ""]
    biased = [s for s in strategies if comp[s].get("bias")]
    if biased:
        b0 = comp[biased[0]]["bias"]
        out += ["Exposure bias (`mmrank.report.bias`, evaluation code against the market's truth): partial "
                "Spearman between an item's mean test score and its training impressions, controlling for its "
                "true appeal, or for its mean true click probability; Spearman within appeal deciles; GAUC on "
                f"the low-impression items (at most {_f(b0.get('low_max'), 0)} training impressions, "
                f"{b0.get('low_n', 0):,} test impressions). A scorer of the true click probability gives "
                f"{_f((b0.get('oracle_partial_spearman') or {}).get('mean'), 3)} in the appeal column.", "",
                *_table(["strategy", "partial Spearman (appeal)", "within appeal deciles",
                         "partial Spearman (true CTR)", "GAUC low-impression"],
                        [[s, *(_pm(comp[s]["bias"].get(k), 3 if k != "low_gauc" else 4, seeds=n)
                               for k in ("partial_spearman", "spearman_within_deciles",
                                         "partial_spearman_true_ctr", "low_gauc"))] for s in biased]), ""]
    if comp.get("make_epochs_curve"):
        out += ["MAKE pre-training epochs (Figure 6c): " + ", ".join(
            f"E={c['epochs']}: GAUC {_f(c.get('gauc'))}" for c in comp["make_epochs_curve"]) + ".", ""]
    if comp.get("epochs_curve"):
        out += ["Test AUC over training epochs (Figure 3; seed 0): " + ", ".join(
            f"E={c['epochs']}: id {_f(c.get('id_auc'))} / multimodal {_f(c.get('multimodal_auc'))}"
            for c in comp["epochs_curve"]) + ".", ""]
    return out + [_source(label, "ctr/compare.json", "mmrank ctr compare"), ""]


def _rerank_models(comp: dict) -> list[str]:
    return [m for m in comp.get("meta", {}).get("models", []) if m in comp]


def rerank_rows(res: Results, label: str) -> list[str]:
    comp = res.get(label, "rerank/compare.json")
    meta = comp.get("meta", {})
    head = ["model", "AUC click", "AUC cart", "AUC purchase", "NDCG@10", "E[purchases]", "E[GMV]",
            "E[purchases] all"]
    n = meta.get("seeds") or 1
    rows = [[m, _pm(comp[m]["auc"]["click"], seeds=n), _pm(comp[m]["auc"]["cart"], seeds=n),
             _pm(comp[m]["auc"]["purchase"], seeds=n), _pm(comp[m].get("ndcg@10"), seeds=n),
             _pm(comp[m].get("expected_purchases"), 3, n), _pm(comp[m].get("expected_gmv"), 2, n),
             _pm(comp[m].get("expected_purchases_all"), 3, n)] for m in _rerank_models(comp)]
    out = [f"{meta.get('seeds')} seed(s); {meta.get('train_requests', 0):,} training and "
           f"{meta.get('test_requests', 0):,} test lists; evaluator: {meta.get('evaluator')}.", "",
           *_table(head, rows), ""]
    checks = meta.get("acceptance") or {}
    if checks:
        out += ["Acceptance lines, computed from the figures by `rerank compare`:", ""]
        for k, v in checks.items():
            if v is None:
                out.append(f"- {k}: not measurable (a figure is missing)")
            elif "holds" in v:
                out.append(f"- {k}: **{'holds' if v['holds'] else 'does not hold'}**")
            else:
                bad = [m for m, x in v.items() if not x.get("holds")]
                out.append(f"- {k}: **{'holds' if not bad else 'does not hold for ' + ', '.join(bad)}**")
        out.append("")
    return out + [_source(label, "rerank/compare.json", "mmrank rerank compare"), ""]


def store_rows(res: Results, label: str) -> list[str]:
    st = (res.get(label, "report/results.json") or {}).get("stages", {}).get("store") or {}
    if not st or "skipped" in st:
        return _absent(label, "embedding-table figures")
    return [f"{st.get('items'):,} items embedded in {st.get('embed_seconds')} s; ANN index "
            f"{st.get('index')} (recall@10 {_f(st.get('index_recall_at_10'))}); {st.get('ingested')} new "
            f"items ingested, p50 {st.get('ingest_p50_ms')} ms (max {st.get('ingest_max_ms')} ms) from arrival "
            f"to searchable; image-search recall@10 of the photographed item "
            f"{_f(st.get('image_search_recall_at_10'))}.", "",
            _source(label, "report/results.json", "mmrank demo"), ""]


# --------------------------------------------------------------------------------------------------
# the README's headline blocks: the demo run only


def _headline(res: Results, rel: str, what: str, render: Callable[[Results, str], list[str]]) -> list[str]:
    if res.get("demo", rel) is None:
        return _absent("demo", what)
    return render(res, "demo")


def readme_market(res: Results, label: str) -> list[str]:
    man = res.get(label, "data/manifest.json")
    demo = res.get(label, "report/results.json") or {}
    parts = []
    for name, s in man.get("surfaces", {}).items():
        parts.append(f"{name} CTR {100 * s['rates']['click']:.2f}%, oracle / attainable AUC "
                     f"{_f(s['oracle_auc'])} / {_f(s['attainable_auc'])}")
    took = f" The whole demo took {demo['seconds']} s." if demo.get("seconds") is not None else ""
    return [f"Market: {'; '.join(parts)}.{took}", ""]


def readme_pretrain(res: Results, label: str) -> list[str]:
    table = res.get(label, "pretrain/compare.json")
    return [*_table(["pre-training variant", "Acc@1 image", "Acc@1 text", "Acc@5 image", "Acc@5 text"],
                    [[v, _f(r["acc@1"]["image"]), _f(r["acc@1"]["text"]), _f(r["acc@5"]["image"]),
                      _f(r["acc@5"]["text"])] for v, r in table.items()]), ""]


# The markets of the README's MOON2.0 rows (issue 20) and Table 3 rows beyond the paper's (issues 21, 22,
# 25), in this order.
STUDY_MARKETS = {"moon-default": "default", "moon-real": "real catalog"}


def readme_moon_rows(res: Results) -> list[str]:
    """The MOON2.0 rows' Acc@1 (mean ± std over seeds) on each study market, one column pair per market;
    Acc@5 is in docs/pretrain.md."""
    have = [label for label in STUDY_MARKETS if res.get(label, "pretrain/compare.json")]
    if not have:
        return _absent("moon-default", "pre-training comparison")
    variants = list(dict.fromkeys(v for label in have for v in res.get(label, "pretrain/compare.json")))
    cols, seeds = {}, set()
    for label in have:
        table, std = res.get(label, "pretrain/compare.json"), _pretrain_std(res, label)
        detail = res.get(label, "pretrain/compare_detail.json") or {}
        n = max([r.get("seeds", 1) for r in detail.get("variants", {}).values()] or [1])
        seeds.add(n)
        cols[label] = {v: [_pm({"mean": table[v]["acc@1"][m], "std": ((std.get(v) or {}).get("acc@1") or {}).get(m)},
                               seeds=n) if v in table else "not run" for m in ("image", "text")]
                       for v in variants}
    head = ["variant", *(f"{STUDY_MARKETS[label]}: Acc@1 {m}" for label in have for m in ("image", "text"))]
    return [f"Acc@1, mean ± std over {' / '.join(map(str, sorted(seeds)))} training seeds (the reference rows "
            "train nothing). Source: " + ", ".join(f"`docs/results/{label}/pretrain/compare.json`" for label in have)
            + ", written by `mmrank pretrain compare`; std from `pretrain/compare_detail.json`.", "",
            *_table(head, [[v, *(c for label in have for c in cols[label][v])] for v in variants]), ""]


def readme_table3_rows(res: Results) -> list[str]:
    """Table 3 on the default market and the real catalog: GAUC (mean ± std), its change against `id`
    overall, on the rarest item-frequency group and on new items, and the exposure bias."""
    have = [label for label in STUDY_MARKETS if res.get(label, "ctr/compare.json")]
    if not have:
        return _absent("moon-default", "CTR comparison")
    rows, seeds = [], set()
    for label in have:
        comp = res.get(label, "ctr/compare.json")
        n = comp.get("seeds") or 1
        seeds.add(n)
        for s in _ctr_strategies(comp):
            r, rel = comp[s], comp[s].get("relative") or {}
            rows.append([STUDY_MARKETS[label], s, _pm(r["gauc"], seeds=n), _pct(rel.get("gauc")),
                         _pct((rel.get("groups_gauc") or [None])[0]), _pct(rel.get("new_items_gauc")),
                         _pm((r.get("bias") or {}).get("partial_spearman"), 3, n)])
    head = ["market", "strategy", "GAUC", "vs id", "vs id, rarest items", "vs id, new items", "exposure bias"]
    n_seeds = " / ".join(str(n) for n in sorted(seeds))
    return [f"Mean ± std over {n_seeds} seed(s); changes are relative to `id`'s mean GAUC; exposure bias: "
            "partial Spearman of an item's mean score and its training impressions at equal true appeal "
            "(`mmrank.report.bias`; 0 is unbiased). Source: "
            + ", ".join(f"`docs/results/{label}/ctr/compare.json`" for label in have)
            + ", written by `mmrank ctr compare`.", "", *_table(head, rows), ""]


def readme_rerank(res: Results, label: str) -> list[str]:
    comp = res.get(label, "rerank/compare.json")
    return [*_table(["re-ranker", "AUC purchase", "NDCG@10", "E[purchases]", "E[GMV]"],
                    [[m, _f(comp[m]["auc"]["purchase"]["mean"]), _f((comp[m].get("ndcg@10") or {}).get("mean")),
                      _f((comp[m].get("expected_purchases") or {}).get("mean"), 3),
                      _f((comp[m].get("expected_gmv") or {}).get("mean"), 2)] for m in _rerank_models(comp)]), ""]


def cold_start_rows(res: Results) -> list[str]:
    cs = res.bench.get("cold_start")
    if cs is None:
        return ["*No cold-start run in `docs/results/bench/cold_start.json`.* Make it with:", "", "```bash",
                "python benchmarks/cold_start.py --json /tmp/cold_start.json",
                "mmrank report docs --bench cold_start=/tmp/cold_start.json", "```", ""]
    rows = [[p["phase"], f"{p['seconds']:.0f} s", "n/a" if p.get("ceiling_s") is None else f"{p['ceiling_s']:.0f} s",
             {True: "yes", False: "**no**", None: "n/a"}[p.get("within")], "ok" if p["returncode"] == 0 else
             f"**exit {p['returncode']}**"] for p in cs["phases"]]
    out = [f"Commit `{cs.get('commit', '?')[:10]}`, {cs.get('cpus')} CPUs, {cs.get('date')}; a fresh clone with "
           "empty compile and home caches.", "",
           *_table(["phase", "wall time", "ceiling", "within", "result"], rows), ""]
    if cs.get("slowest"):
        out += ["The 15 slowest tests (pytest `--durations=15`):", "",
                *_table(["seconds", "phase", "test"], [[f"{t['seconds']:.2f}", t["when"], f"`{t['test']}`"]
                                                      for t in cs["slowest"]]), ""]
    return out + ["Source: `docs/results/bench/cold_start.json`, written by `benchmarks/cold_start.py --json`.", ""]


def _spread_row(name: str, s: dict[str, Any], digits: int = 2) -> list[str]:
    vals = ", ".join(f"{v:.{digits}f}" for v in s.get("values", []))
    return [name, f"{s['mean']:.{digits}f}", f"{s['min']:.{digits}f} - {s['max']:.{digits}f}",
            f"{s['std']:.{digits}f}", vals]


def _no_bench(name: str, command: str) -> list[str]:
    return [f"*No run in `docs/results/bench/{name}.json`.* Make it with:", "", "```bash",
            f"{command} --json /tmp/{name}.json", f"mmrank report docs --bench {name}=/tmp/{name}.json",
            "```", ""]


def serve_latency_rows(res: Results) -> list[str]:
    b = res.bench.get("serve_latency")
    if b is None:
        return _no_bench("serve_latency", "python benchmarks/serve_latency.py --run runs/demo --repeat 3")
    g, cfg = b["goals"], b.get("config", {})
    names = {"overhead_c1_p99": f"concurrency 1: (mmrank p99 - raw forward p99) / raw forward p99 "
                                f"(goal <= {g['overhead_c1_p99_max']})",
             "speedup_c16": f"concurrency 16: mmrank / plain requests/s (goal >= {g['speedup_c16_min']})",
             "speedup_c16_small": "concurrency 16, small requests: mmrank / plain requests/s"}
    rows = [_spread_row(names.get(k, k), v) for k, v in b["summary"].items()]
    return [f"`benchmarks/serve_latency.py`, {len(b['runs'])} runs against one pair of servers; "
            f"{cfg.get('candidates')} candidates x {cfg.get('history')} behaviour items per request, "
            f"{b.get('machine', {}).get('cores')} cores.", "",
            *_table(["ratio", "mean", "min - max", "std", "each run"], rows), "",
            "Source: `docs/results/bench/serve_latency.json`, written by `benchmarks/serve_latency.py --json`.", ""]


def serve_load_rows(res: Results) -> list[str]:
    b = res.bench.get("serve_load")
    if b is None:
        return _no_bench("serve_load", "python benchmarks/serve_load.py --run runs/demo --repeat 3")
    cfg = b.get("config", {})
    rows = [_spread_row(k if k.startswith("ratio") else f"{k} (requests/s)", v, 1 if not k.startswith("ratio")
                        else 2) for k, v in b["summary"].items()]
    return [f"`benchmarks/serve_load.py`, {len(b['runs'])} runs: each endpoint's knee, the highest open-loop "
            f"arrival rate whose p99 stays under {cfg.get('deadline_ms')} ms with every request answered (rates "
            f"from {cfg.get('start')}/s, each {cfg.get('step')} times the last, {cfg.get('seconds')} s each, so a "
            f"knee is known to one step of the grid).", "",
            *_table(["endpoint", "mean", "min - max", "std", "each run"], rows), "",
            "Source: `docs/results/bench/serve_load.json`, written by `benchmarks/serve_load.py --json`.", ""]


# --------------------------------------------------------------------------------------------------
# off-policy estimators against the truth, and the counterfactual learners (rerank/compare.json's
# ``offpolicy``, written when the market's production policy is stochastic)

ESTIMATOR_NAMES = {"ips": "IPS", "snips": "SNIPS", "dr": "DR", "pbm": "click model (PBM)"}


def _offpolicy(res: Results, label: str) -> dict[str, Any]:
    return (res.get(label, "rerank/compare.json") or {}).get("offpolicy") or {}


def _offpolicy_labels(res: Results) -> list[str]:
    """Runs with off-policy figures whose logs came from a stochastic production policy (the manifest's
    ``search_policy``); on deterministic logs an order the policy never shows has no propensity."""
    return [label for label in res.labels() if _offpolicy(res, label).get("summary")
            and (res.get(label, "data/manifest.json") or {}).get("search_policy")]


def _exploration(res: Results, label: str) -> str:
    """The logging policy's exploration share, from the copied market manifest, and whether the
    market's list effects (price comparison within the list, substitution) were off; prefixed by the
    market when it is not the small one (a real catalog, or its number of items)."""
    man = res.get(label, "data/manifest.json") or {}
    beh = (man.get("config") or {}).get("behaviour") or {}
    e = (man.get("search_policy") or {}).get("exploration", beh.get("policy_exploration"))
    text = "n/a" if e is None else f"{e:g}"
    cfg = man.get("config") or {}
    if cfg.get("catalog"):
        text = f"real catalog, {text}"
    elif cfg.get("n_items", SIZES["small"]["n_items"]) != SIZES["small"]["n_items"]:
        text = f"{cfg['n_items']:,} items, {text}"
    if beh.get("substitution") == 0 and not any(beh.get("region_price_sensitivity") or [1]):
        text += ", no price comparison or substitution"
    return text


def _offpolicy_caption(res: Results, labels: list[str]) -> str:
    def one(values: Iterable[Any]) -> str:
        return " / ".join(dict.fromkeys(str(v) for v in values))
    comps = [res.get(label, "rerank/compare.json") for label in labels]
    temps = [((res.get(label, "data/manifest.json") or {}).get("search_policy") or {}).get("temperature")
             for label in labels]
    return (f"Runs {', '.join(f'`{label}`' for label in labels)}: production policy Plackett-Luce at "
            f"temperature {one(temps)}; {one(len(_offpolicy(res, label)['truth']) for label in labels)} orders "
            f"judged; {one(c['meta'].get('seeds') for c in comps)} seeds; "
            f"{one(format(c['meta'].get('test_requests', 0), ',') for c in comps)} test requests.")


def _offpolicy_source(labels: list[str]) -> str:
    return (f"Source: `docs/results/{{{','.join(labels)}}}/rerank/compare.json` (`offpolicy`; exploration from "
            "`data/manifest.json`), written by `mmrank rerank compare` / `mmrank market generate`.")


def _no_offpolicy() -> list[str]:
    return ["*No run with off-policy figures in `docs/results/`* (a market logged by a stochastic production "
            "policy). Make them with the commands in [runs.md](runs.md#cf-e01).", ""]


def _learners(comp: dict) -> list[str]:
    return [m for m in comp.get("meta", {}).get("models", []) if m.endswith("-ips") and m in comp]


def _beats_logged(comp: dict, model: str) -> bool | None:
    """Whether ``model``'s true expected purchases among every candidate exceed the logged policy's
    by more than the model's std over seeds."""
    m, lg = comp[model].get("expected_purchases_all") or {}, (comp.get("logged") or {}).get("expected_purchases_all") or {}
    if m.get("mean") is None or lg.get("mean") is None:
        return None
    return m["mean"] - lg["mean"] > (m.get("std") or 0.0)


def _yes_no(x: bool | None) -> str:
    return {True: "**yes**", False: "no", None: "n/a"}[x]


def readme_offpolicy_rows(res: Results) -> list[str]:
    labels = _offpolicy_labels(res)
    if not labels:
        return _no_offpolicy()

    def cell(v: dict) -> str:
        sp = "n/a" if v.get("spearman") is None else f"{v['spearman']:.2f}"
        return f"{v['bias']:+.3f} / {v['rmse']:.3f} / {sp}"
    rows = [[_exploration(res, label), *(cell(_offpolicy(res, label)["summary"][e]["purchases"])
                                         for e in ESTIMATOR_NAMES)] for label in labels]
    comps = {label: res.get(label, "rerank/compare.json") for label in labels}
    learners = list(dict.fromkeys(m for c in comps.values() for m in _learners(c)))
    lrows = []
    for label, c in comps.items():
        n = c["meta"].get("seeds") or 1
        beat = [m for m in learners if m in c and _beats_logged(c, m)]
        lrows.append([_exploration(res, label), _f((c["logged"].get("expected_purchases_all") or {}).get("mean")),
                      *(_pm(c[m].get("expected_purchases_all"), 4, n) if m in c else "n/a" for m in learners),
                      ", ".join(beat) or "none"])
    return [_offpolicy_caption(res, labels) + " Bias / RMSE / rank correlation of expected purchases per "
            "request:", "", *_table(["exploration", *ESTIMATOR_NAMES.values()], rows), "",
            "True expected purchases per request choosing among every candidate (counterfactual learners: "
            "mean ± std over seeds):", "",
            *_table(["exploration", "logged", *learners, "beats logged by > 1 std"], lrows), "",
            _offpolicy_source(labels), ""]


def offpolicy_estimator_rows(res: Results) -> list[str]:
    labels = _offpolicy_labels(res)
    if not labels:
        return _no_offpolicy()
    digits = {"purchases": 4, "gmv": 2, "clicks": 3}
    head = ["exploration (run)", "estimator"]
    for k, name in (("purchases", "purchases"), ("gmv", "GMV"), ("clicks", "clicks")):
        head += [f"{name}: bias", "RMSE", "rank corr."]
    rows = []
    for label in labels:
        summ = _offpolicy(res, label)["summary"]
        for e, name in ESTIMATOR_NAMES.items():
            row = [f"{_exploration(res, label)} (`{label}`)", name]
            for k, d in digits.items():
                v = summ[e][k]
                row += [_f(v.get("bias"), d), _f(v.get("rmse"), d), _f(v.get("spearman"), 2)]
            rows.append(row)
    return [_offpolicy_caption(res, labels) + " Per estimator, across the orders: bias (mean estimate - "
            "truth), RMSE, and the Spearman rank correlation of its order of the models with the true order "
            "(clicks, purchases and GMV per request, choosing among every candidate).", "",
            *_table(head, rows), "", _offpolicy_source(labels), ""]


def offpolicy_learner_rows(res: Results) -> list[str]:
    labels = _offpolicy_labels(res)
    if not labels:
        return _no_offpolicy()
    comps = {label: res.get(label, "rerank/compare.json") for label in labels}
    models = list(dict.fromkeys(m for c in comps.values() for m in _rerank_models(c)))
    rows = []
    for m in models:
        row = [f"`{m}`"]
        for label, c in comps.items():
            if m not in c:
                row.append("n/a")
                continue
            cell = _pm(c[m].get("expected_purchases_all"), 4, c["meta"].get("seeds") or 1)
            dr = ((_offpolicy(res, label).get("estimates") or {}).get(m) or {}).get("dr", {}).get("purchases")
            row.append(cell if dr is None else f"{cell} (DR {dr:.3f})")
        rows.append(row)
    learners = list(dict.fromkeys(m for c in comps.values() for m in _learners(c)))
    brows = [[f"{_exploration(res, label)} (`{label}`)",
              *(_yes_no(_beats_logged(c, m) if m in c else None) for m in learners)] for label, c in comps.items()]
    return ["True expected purchases per request when each model chooses among every candidate (the "
            "evaluator; mean ± std over seeds) and, in brackets, DR's estimate of it. " + _offpolicy_caption(res, labels),
            "", *_table(["model", *(f"e = {_exploration(res, label)} (`{label}`)" for label in labels)], rows), "",
            "Does a counterfactual learner beat the logged policy by more than one std (its mean - logged's "
            "mean > its std over seeds)?", "",
            *_table(["exploration (run)", *(f"`{m}`" for m in learners)], brows), "",
            _offpolicy_source(labels), ""]


def _plot(res: Results, label: str, rel: str, what: str) -> list[str]:
    return [f"![{what}](results/{label}/{rel})", ""] if (res.root / label / rel).is_file() else []


def _point_seconds(points: Iterable[dict]) -> float:
    """The compute time the points themselves recorded (encoders and CTR models), summed."""
    total = 0.0
    for p in points:
        total += float(p.get("encoder_seconds") or 0)
        for r in p.get("simtier+make", []) if isinstance(p.get("simtier+make"), list) else []:
            total += float(r.get("seconds") or 0)
    return total


def exchange_rows(res: Results, label: str) -> list[str]:
    ex = res.get(label, "analysis/exchange_rate.json")
    cps = ex.get("checkpoints", [])
    metrics = list(ex.get("exchange_rates", {}))
    ids = ex.get("id", {})
    out = [f"{len(cps)} checkpoints; gain = GAUC(simtier+make) − GAUC(id), mean over {ex.get('seeds')} seed(s) "
           "(the same seeds for every checkpoint); ID model GAUC per seed: "
           + ", ".join(f"{_f(v.get('gauc'))}" for v in ids.values()) + f". {ex.get('note', '')}.", "",
           *_table(["checkpoint", *metrics, "gain", "gain per seed"],
                   [[c["checkpoint"], *(_f(c["metrics"].get(m)) for m in metrics), f"{c['gain']:+.4f}",
                     ", ".join(f"{g:+.4f}" for g in c.get("gain_per_seed", []))] for c in cps]), "",
           *_table(["metric", "slope", "95% interval", "Spearman"],
                   [[m, f"{r['slope']:+.4f}", f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]", f"{r['spearman']:+.3f}"]
                    for m, r in ex.get("exchange_rates", {}).items()]), "",
           f"Best exchange rate: `{ex.get('best_metric')}` ({ex.get('rule')}). The points' own compute time, "
           f"summed: {_point_seconds(cps):,.0f} s.", ""]
    return out + _plot(res, label, "analysis/exchange_rate.png", "gain against each metric (Figure 6a)") + [
        _source(label, "analysis/exchange_rate.json", "mmrank analyze exchange-rate"), ""]


def scaling_rows(res: Results, label: str) -> list[str]:
    sc = res.get(label, "analysis/scaling.json")
    rows = []
    for axis, a in sc.get("axes", {}).items():
        pts = a.get("points", [])
        rows.append([f"{axis}: {a.get('label', axis)}", "x", ", ".join(f"{p.get('x', 0):,.0f}" for p in pts), "", ""])
        for curve, c in (a.get("curves") or {}).items():
            law, sat = c.get("power_law") or {}, (c.get("saturation") or {}).get("x")
            b, ci = law.get("exponent"), law.get("ci") or [None, None]
            rows.append(["", curve, ", ".join(_f(p.get(curve)) for p in pts),
                         f"not fitted ({law.get('reason')})" if b is None else
                         f"{b:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]",
                         "not within range" if sat is None else f"{sat:,.0f}"])
    out = [f"{sc.get('seeds')} seed(s). Fit: {sc.get('fit')}. Saturation: {sc.get('saturation_rule')}. "
           f"{sc.get('note', '')}.", "",
           *_table(["axis", "curve", "values at the axis' points", "exponent b [95%]", "saturates at"], rows), ""]
    return out + _plot(res, label, "analysis/scaling.png", "scaling curves") + [
        _source(label, "analysis/scaling.json", "mmrank analyze scaling"), ""]


def readme_analyze_rows(res: Results) -> list[str]:
    """MOON's analyses on the default market in short: each metric's exchange rate and the best one,
    each scaling curve's exponent, the wall times; every point and the plots are in docs/analyze.md."""
    label = "moon-default"
    ex, sc = res.get(label, "analysis/exchange_rate.json"), res.get(label, "analysis/scaling.json")
    if ex is None and sc is None:
        return _absent(label, "MOON analysis")
    out: list[str] = []
    if ex is not None:
        rates = "; ".join(f"`{m}` {r['slope']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"
                          for m, r in ex.get("exchange_rates", {}).items())
        out += [f"- Exchange rate ({len(ex.get('checkpoints', []))} checkpoints, {ex.get('seeds')} CTR seed(s), "
                f"wall {ex.get('seconds', 0):,.0f} s): GAUC gain per unit of each metric, 95% interval: {rates}. "
                f"Best: `{ex.get('best_metric')}` ({ex.get('rule')})."]
    if sc is not None:
        def exponent(c: dict | None) -> str:
            law = (c or {}).get("power_law") or {}
            b, ci = law.get("exponent"), law.get("ci") or [None, None]
            return "not fitted" if b is None else f"{b:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        axes = "; ".join(f"{a.get('label', axis)} ({len(a.get('points', []))} points): " + ", ".join(
            f"`{c}` {exponent(curves[c])}" for c in ("acc@1.image", "acc@1.text", "gain") if c in curves)
            for axis, a in sc.get("axes", {}).items() for curves in [a.get("curves") or {}])
        out += [f"- Scaling (wall {sc.get('seconds', 0):,.0f} s): power-law exponent b of each curve, 95% interval "
                f"(not fitted: a value <= 0; Acc@1 does not move with the behaviour length): {axes}."]
    return out + [""]


def freshness_rows(res: Results, label: str) -> list[str]:
    fr = res.get(label, "ctr/follow/freshness.json")
    rows = fr.get("rows", [])
    seeds = fr.get("seeds") or 1

    def cells(r: dict, part: str) -> list[str]:
        def one(stat: dict) -> str:
            m = stat.get("mean")
            return "n/a" if m is None or not math.isfinite(m) else _pm(stat, seeds=seeds)
        return [one(r[part][k]) for k in ("auc", "gauc", "logloss")]

    out = [f"Near-line `{fr.get('strategy')}`, {seeds} seed(s), batch {fr.get('batch_size')}; protocol: "
           f"{fr.get('protocol')}. Representation-delay rows publish every {fr.get('base_publish'):,} s of "
           "event time; publish-interval rows read representations at arrival.", ""]
    head = ["group", "variant", "AUC", "GAUC", "LogLoss", "first-day AUC", "first-day GAUC", "first-day LogLoss"]
    for title, (a, b) in ((f"Test split ({rows[0]['all']['n']:,} impressions, {rows[0]['first_day']['n']:,} "
                           "of items in their first day; the batch model is comparable here)" if rows else "Test split",
                           ("all", "first_day")),
                          (f"Every window after the first day ({rows[0]['stream']['n']:,} impressions, "
                           f"{rows[0]['stream_first_day']['n']:,} of items in their first day; near-line rows only)"
                           if rows else "Every window after the first day", ("stream", "stream_first_day"))):
        out += [f"{title}:", "", *_table(head, [[r["group"], r["variant"], *cells(r, a), *cells(r, b)]
                                                for r in rows]), ""]
    return out + [_source(label, "ctr/follow/freshness.json", "mmrank ctr follow --freshness"), ""]


def creative_rows(res: Results, label: str) -> list[str]:
    c = res.get(label, "creative/compare.json")
    seeds = c.get("seeds") or 1

    def cell(p: dict, k: str, digits: int) -> str:
        return _pm({"mean": p.get(k), "std": p.get(f"{k}_std")}, digits, seeds=seeds)

    rows = [[name, cell(p, "ctr", 5), cell(p, "purchases", 5)] for name, p in c.get("policies", {}).items()]
    out = [f"{c.get('test_impressions', 0):,} test impressions (the latest by time), {c.get('per_item')} creatives "
           f"per item, logging exploration {c.get('exploration')} (assumed); selectors: mean ± std over {seeds} "
           "training seeds. Expected values from the hidden truth (simulated).", "",
           *_table(["policy", "expected CTR", "expected purchases / impression"], rows), "",
           f"The selector's share of the oracle's CTR gain over the default: "
           f"{100 * (c.get('selector_share_of_oracle_gain') or 0):.1f}%; it changes the creative on "
           f"{100 * (c.get('selector_changed_share') or 0):.1f}% of the test impressions. An explanation: "
           + (f"\"{c['examples'][0]['reason']}\"" if c.get("examples") else "none") + ".", ""]
    return out + [_source(label, "creative/compare.json", "mmrank creative compare"), ""]


BLOCKS: dict[str, Callable[[Results], list[str]]] = {
    "market": lambda r: _sections(r, "data/manifest.json", "market manifest", market_rows),
    "pretrain": lambda r: _sections(r, "pretrain/compare.json", "pre-training comparison", pretrain_rows),
    "pretrain-filter": lambda r: _sections(r, "pretrain/filter_report.json", "filter report", filter_rows,
                                           [k for k in r.labels() if r.get(k, "pretrain/filter_report.json")]
                                           or ["moon-noisy"]),
    "ctr": lambda r: _sections(r, "ctr/compare.json", "CTR comparison", ctr_rows),
    "rerank": lambda r: _sections(r, "rerank/compare.json", "re-ranking comparison", rerank_rows),
    "store": lambda r: _sections(r, "report/results.json", "demo results", store_rows, ["demo"]),
    "readme-market": lambda r: _headline(r, "data/manifest.json", "market manifest", readme_market),
    "readme-pretrain": lambda r: _headline(r, "pretrain/compare.json", "pre-training comparison", readme_pretrain),
    "readme-rerank": lambda r: _headline(r, "rerank/compare.json", "re-ranking comparison", readme_rerank),
    "analyze-exchange": lambda r: _sections(r, "analysis/exchange_rate.json", "exchange-rate analysis",
                                            exchange_rows, [k for k in r.labels()
                                                            if r.get(k, "analysis/exchange_rate.json")]
                                            or ["an-small"]),
    "analyze-scaling": lambda r: _sections(r, "analysis/scaling.json", "scaling analysis", scaling_rows,
                                           [k for k in r.labels() if r.get(k, "analysis/scaling.json")]
                                           or ["an-small"]),
    "readme-moon": readme_moon_rows,
    "follow-freshness": lambda r: _sections(r, "ctr/follow/freshness.json", "freshness table", freshness_rows,
                                            [k for k in r.labels() if r.get(k, "ctr/follow/freshness.json")]
                                            or ["moon-default"]),
    "creative-compare": lambda r: _sections(r, "creative/compare.json", "creative comparison", creative_rows,
                                            [k for k in r.labels() if r.get(k, "creative/compare.json")]
                                            or ["creative-small"]),
    "cold-start": cold_start_rows,
    "serve-latency": serve_latency_rows,
    "serve-load": serve_load_rows,
    "runs": runs_rows,
    "readme-offpolicy": readme_offpolicy_rows,
    "readme-table3": readme_table3_rows,
    "readme-analyze": readme_analyze_rows,
    "offpolicy-estimators": offpolicy_estimator_rows,
    "offpolicy-learners": offpolicy_learner_rows,
}


# --------------------------------------------------------------------------------------------------
# copying and rendering


def _label_path(spec: str, flag: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    if not sep or not _LABEL.match(label) or not path:
        raise MMRankError(f"{flag} {spec!r}: expected LABEL=PATH, LABEL of a-z, 0-9, '-', '_' "
                          f"(e.g. {flag} demo=runs/demo)")
    return label, Path(path)


def copy_run(run: Path, dest: Path, only: Iterable[str] | None = None) -> list[str]:
    """Copy the JSON files of :data:`RUN_FILES` (or of ``only``, a study run's own) that ``run`` has into
    ``dest`` (replacing it), and the plots of :data:`RUN_PLOTS` beside them."""
    found = [rel for rel in (only or RUN_FILES) if (run / rel).is_file()]
    if not found:
        raise MMRankError(f"{run}: none of {', '.join(RUN_FILES)} found (is this a run directory?)")
    for rel in found:
        _read(run / rel)                         # refuse to copy a file that is not JSON
    if dest.exists():
        shutil.rmtree(dest)
    for rel in found + [rel for rel in RUN_PLOTS if (run / rel).is_file()]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / rel, dest / rel)
    return found


def render_text(text: str, res: Results, where: str = "", docs_prefix: str = "") -> str:
    """``text`` with every generated block's body replaced by its rendering from ``res``; links to
    docs pages get ``docs_prefix`` (``"docs/"`` in the README)."""
    out, pos = [], 0
    for m in _BEGIN.finditer(text):
        if m.start() < pos:
            continue
        key = m.group(1)
        end = text.find(_END, m.end())
        if end < 0:
            raise MMRankError(f"{where}: '<!-- generated: {key} -->' has no '{_END}'")
        if key not in BLOCKS:
            raise MMRankError(f"{where}: unknown generated block {key!r}; known: {', '.join(BLOCKS)}")
        body = "\n".join(BLOCKS[key](res)).rstrip("\n") + "\n"
        body = body.replace("](runs.md", f"]({docs_prefix}runs.md")
        out += [text[pos:m.end()], body]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def pages(root: Path) -> list[Path]:
    """The files that hold generated blocks: README.md and docs/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.exists()]


def write_docs(root: str | Path = ".", runs: Iterable[str] = (), bench: Iterable[str] = ()) -> dict[str, Any]:
    """Copy each ``LABEL=RUN`` run's JSON and each ``NAME=FILE`` benchmark JSON under
    ``root/docs/results/``, then render the generated blocks of ``root/README.md`` and
    ``root/docs/*.md``. Returns ``{"copied": {label: [files]}, "changed": [pages]}``."""
    root = Path(root)
    if not (root / "docs").is_dir():
        raise MMRankError(f"{root / 'docs'}: no such directory (run from the repository root, or pass --root)")
    results_dir = root / "docs" / "results"
    specs = [_label_path(s, "--run") for s in runs]
    for label, run in specs:
        if not run.is_dir():
            raise MMRankError(f"--run {label}={run}: no such directory")
    benches = [_label_path(s, "--bench") for s in bench]
    for name, f in benches:
        if not f.is_file():
            raise MMRankError(f"--bench {name}={f}: no such file")
        _read(f)
    copied = {label: copy_run(run, results_dir / label, STUDY_RUNS.get(label, {}).get("files"))
              for label, run in specs}
    for name, f in benches:
        (results_dir / "bench").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, results_dir / "bench" / f"{name}.json")
    res = Results(results_dir)
    changed = []
    for page in pages(root):
        text = page.read_text()
        new = render_text(text, res, str(page), "" if page.parent.name == "docs" else "docs/")
        if new != text:
            page.write_text(new)
            changed.append(str(page))
    return {"copied": copied, "changed": changed, "runs": res.labels()}
