"""Training and inference throughput of mmrank's ID DIN against DeepCTR-Torch's DIN, on the same rows
in the same run; and the step time SimTier adds to the ID model (computed in the model vs read from
the data pipeline, the measurement behind ``CtrConfig.simtier_in``).

Setup (issue 4): 1M synthetic rows, history L = 50 (lengths uniform in [1, 50] unless --full-history),
embedding dim 16, batch 1024, attention MLP [80, 40], MLP [200, 80], Adam, 2 threads. Both models get
the same features (user, item, category; history of items and categories), the same activation
(PReLU) and no L2 term. DeepCTR-Torch runs through its own ``fit``/``predict``.

    .venv/bin/python benchmarks/ctr_throughput.py [--rows 1000000] [--full-history] [--skip-deepctr]
        [--no-compile] [--device cpu|cuda|cuda:N]

Runners: mmrank's DIN as trained by default, the same with ``CtrConfig.compile_attention`` (the
attention unit through torch.compile; its graph is built in the untimed warm-up, whose time is
printed), the same with ``attention_bf16`` too (its roofline limit mixes the bf16 roof for the
attention's FLOPs with the fp32 roof for the rest), and DeepCTR-Torch's DIN.

The roofline lines (``benchmarks/roofline.py``): the fp32 matmul roof and memory bandwidth measured at
the start of the run, the model's matmul FLOPs per sample (forward + backward for training), and the
share of the compute limit each throughput reaches. Below them, the model's own matmuls replayed alone
at their shapes and dtypes: the share of the limit those reach bounds what any fusion of the work
around them could reach.

``--device cuda``: both models on the same GPU. mmrank's DIN trains and predicts under bf16 autocast
(fp32 master weights; the output says so), batches copied from pinned memory without blocking;
DeepCTR-Torch's DIN gets ``device=`` in its constructor and its ``fit``/``predict`` move the data
themselves (fp32). Timings wait for the GPU (synchronised). The roofs are the GPU's
(``roofline.machine(device=...)``), and mmrank's matmuls are held against the bf16 roof. The CPU run
(the default) is as before.

Needs the ``bench`` extra (deepctr-torch==0.3.0).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from mmrank.ctr.data import FeatureSpace, iter_batches, load_samples, simtier_features
from mmrank.ctr.models import CtrConfig, CtrModel, ModelSizes
from mmrank.ctr.trainer import TrainConfig, make_optimizer, optimizer_step, predict
from mmrank.data.schemas import CTR_SAMPLES, HISTORY_LEN
from mmrank.device import autocast, batch_to, describe, resolve_device, synchronize
from mmrank.models.layers import ItemVectors
from roofline import count_flops, machine, machine_line, matmul_seconds, matmul_shapes, roofline_line

L, EMB, BATCH = HISTORY_LEN, 16, 1024
DEVICE = torch.device("cpu")   # where every runner runs (--device); bf16 autocast for mmrank on CUDA


def make_rows(n: int, n_items: int, n_users: int, n_cats: int, full: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    item_cat = rng.integers(1, n_cats + 1, n_items + 1)
    lens = np.full(n, L) if full else rng.integers(1, L + 1, n)
    item = rng.choice(n_items, n, p=pop) + 1
    hist = np.zeros((n, L), np.int64)
    valid = np.arange(L)[None, :] < lens[:, None]
    hist[valid] = rng.choice(n_items, int(lens.sum()), p=pop) + 1
    return {"user": rng.integers(1, n_users + 1, n), "item": item, "cat": item_cat[item],
            "hist_item": hist, "hist_cat": np.where(valid, item_cat[hist], 0), "len": lens,
            "label": (rng.random(n) < 0.15).astype(np.float32), "n_items": n_items, "n_users": n_users,
            "n_cats": n_cats}


def to_encoded(rows: dict):
    """The same rows as mmrank's EncodedSamples (via a CTR_SAMPLES table, ids already dense)."""
    n = len(rows["item"])
    valid = np.arange(L)[None, :] < rows["len"][:, None]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(rows["len"], out=offsets[1:])

    def lst(v, t):
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(v, t))

    hist = rows["hist_item"][valid]
    table = pa.table({
        "ts": pa.array(np.arange(n, dtype=np.int64)), "user_id": pa.array(rows["user"].astype(np.int64)),
        "item_id": pa.array(rows["item"].astype(np.int64)), "request_id": pa.array(np.arange(n, dtype=np.int64)),
        "position": pa.array(np.zeros(n, np.int16)), "region": pa.array(np.zeros(n, np.int16)),
        "category_id": pa.array((rows["cat"] - 1).astype(np.int32)), "label": pa.array(rows["label"].astype(np.int8)),
        "hist_item_ids": lst(hist.astype(np.int64), pa.int64()),
        "hist_category_ids": lst((rows["hist_cat"][valid] - 1).astype(np.int32), pa.int32()),
        "hist_ts": lst(np.zeros(len(hist), np.int64), pa.int64()),
        "split": pa.array(np.full(n, "train")),
    }, schema=CTR_SAMPLES)
    import tempfile

    from mmrank.data.io import write_table

    with tempfile.TemporaryDirectory() as d:
        data = load_samples(write_table(table, f"{d}/s.parquet"))
    ids = np.arange(1, rows["n_items"] + 1)
    space = FeatureSpace.fit(data, ids)
    return data, space, space.encode(data)


class MmrankRunner:
    """mmrank's model + the trainer's optimisers, stepped one batch at a time (to interleave)."""

    def __init__(self, enc, space, cfg: CtrConfig, vectors=None) -> None:
        torch.manual_seed(0)
        sizes = ModelSizes(len(space.items), len(space.users), space.n_categories, space.n_regions,
                           vec_dim=0 if vectors is None else vectors.dim)
        self.enc, self.model = enc, CtrModel(cfg, sizes, vectors).to(DEVICE)
        self.opt = make_optimizer(self.model, TrainConfig(batch_size=BATCH))
        self.train_s = self.infer_s = 0.0

    def train_rows(self, rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.model.train()
        for batch in iter_batches(self.enc, rows, BATCH, shuffle=True):
            batch = batch_to(batch, DEVICE)
            with autocast(DEVICE):                     # bf16 on CUDA; nothing on the CPU
                loss = F.binary_cross_entropy_with_logits(self.model(batch)["logit"].float(), batch["label"])
            optimizer_step(self.opt, loss)
        synchronize(DEVICE)
        self.train_s += time.perf_counter() - t0

    def predict_rows(self, rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        predict(self.model, self.enc, rows, batch_size=BATCH, device=DEVICE)
        self.infer_s += time.perf_counter() - t0


class DeepCtrRunner:
    """DeepCTR-Torch's DIN through its own fit/predict, on chunks of the same rows."""

    def __init__(self, rows: dict, act: str) -> None:
        from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
        from deepctr_torch.models import DIN

        n_items, n_cats = rows["n_items"], rows["n_cats"]
        fc = [SparseFeat("user", rows["n_users"] + 1, embedding_dim=EMB),
              SparseFeat("item_id", n_items + 1, embedding_dim=EMB),
              SparseFeat("cate_id", n_cats + 1, embedding_dim=EMB),
              VarLenSparseFeat(SparseFeat("hist_item_id", n_items + 1, embedding_dim=EMB,
                                          embedding_name="item_id"), maxlen=L, length_name="seq_length"),
              VarLenSparseFeat(SparseFeat("hist_cate_id", n_cats + 1, embedding_dim=EMB,
                                          embedding_name="cate_id"), maxlen=L, length_name="seq_length")]
        self.x = {"user": rows["user"], "item_id": rows["item"], "cate_id": rows["cat"],
                  "hist_item_id": rows["hist_item"], "hist_cate_id": rows["hist_cat"],
                  "seq_length": rows["len"]}
        self.y = rows["label"]
        torch.manual_seed(0)
        self.model = DIN(fc, ["item_id", "cate_id"], dnn_hidden_units=(200, 80), att_hidden_size=(80, 40),
                         att_activation=act, dnn_activation=act, l2_reg_embedding=0.0, device=str(DEVICE),
                         seed=0)
        self.model.compile("adam", "binary_crossentropy")
        self.train_s = self.infer_s = 0.0

    def _x(self, rows: np.ndarray) -> dict:
        return {k: v[rows] for k, v in self.x.items()}

    def train_rows(self, rows: np.ndarray) -> None:
        x, y = self._x(rows), self.y[rows]
        t0 = time.perf_counter()
        self.model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
        synchronize(DEVICE)
        self.train_s += time.perf_counter() - t0

    def predict_rows(self, rows: np.ndarray) -> None:
        x = self._x(rows)
        t0 = time.perf_counter()
        self.model.predict(x, batch_size=BATCH)
        self.infer_s += time.perf_counter() - t0


def din_steps(runner: "MmrankRunner") -> tuple[object, object, int]:
    """A training step and an inference call of mmrank's DIN on the first batch, and its size."""
    batch = batch_to(next(iter(iter_batches(runner.enc, np.arange(min(BATCH, len(runner.enc))), BATCH,
                                              shuffle=False))), DEVICE)

    def train() -> None:
        runner.model.train()
        with autocast(DEVICE):
            loss = F.binary_cross_entropy_with_logits(runner.model(batch)["logit"].float(), batch["label"])
        loss.backward()
        runner.model.zero_grad(set_to_none=True)

    def infer() -> None:
        runner.model.eval()
        with torch.no_grad(), autocast(DEVICE):
            runner.model(batch)

    return train, infer, len(batch["label"])


def din_flops(runner: "MmrankRunner") -> tuple[float, float]:
    """Matmul FLOPs per sample of mmrank's DIN on the first batch: (train step, inference)."""
    train, infer, n = din_steps(runner)
    return count_flops(train) / n, count_flops(infer) / n


@contextlib.contextmanager
def eager(att):  # noqa: ANN001
    """The attention unit run eagerly inside the block: the compiled graph runs the same matmuls."""
    compiled, att.compiled = att.compiled, False
    try:
        yield att
    finally:
        att.compiled = compiled


def matmuls_alone(runner: "MmrankRunner") -> tuple[float, float]:
    """Samples/s of the model's matmuls alone, replayed at their shapes and dtypes (the eager graph's):
    (train step, inference)."""
    with eager(runner.model.interest.attention):
        train, infer, n = din_steps(runner)
        return (n / matmul_seconds(matmul_shapes(train), device=DEVICE),
                n / matmul_seconds(matmul_shapes(infer), device=DEVICE))


def attention_flops(runner: "MmrankRunner") -> tuple[tuple[float, float], tuple[float, float]]:
    """:func:`din_flops` of the whole model and, counted the same way, of the attention unit alone
    (run eagerly on the inputs it got in that batch): ``((train, inference), (train, inference))``."""
    att = runner.model.interest.attention
    seen: dict = {}
    real = att.forward_packed

    def spy(*args, **kwargs):
        seen.setdefault("args", args)
        return real(*args, **kwargs)

    att.forward_packed = spy                      # the unit's inputs in a real batch
    try:
        whole = din_flops(runner)
    finally:
        del att.forward_packed
    q, k, rows = (a.detach() for a in seen["args"][:3])
    n = q.shape[0]
    with eager(att):                              # count the eager graph: same matmuls
        train = count_flops(lambda: att.forward_packed(q.requires_grad_(), k.requires_grad_(), rows)[0].sum().backward())
        with torch.no_grad():
            infer = count_flops(lambda: att.forward_packed(q, k, rows))
    return whole, (train / n, infer / n)


def mixed_roof(roofs: dict, flops: float, bf16_flops: float) -> float:
    """GFLOP/s limit of a path running ``bf16_flops`` of its ``flops`` at the bf16 roof, the rest at fp32."""
    return flops / (bf16_flops / roofs["bf16"] + (flops - bf16_flops) / roofs["fp32"])


def interleave(runners: dict, n: int, chunks: int) -> None:
    """Train (then predict) every runner on the same chunks, taking turns chunk by chunk, so that a
    change of machine load over time hits all of them alike."""
    parts = np.array_split(np.arange(n), chunks)
    for part in parts:
        for r in runners.values():
            r.train_rows(part)
    for part in parts:
        for r in runners.values():
            r.predict_rows(part)


def simtier_step_times(enc, space, n_rows: int, dim: int, n_tiers: int = 20, chunks: int = 10) -> dict:
    """Seconds per training step: ID model; + SimTier in the model; + SimTier read from the pipeline
    (counts precomputed once for every row; that one-off cost is reported too)."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(space.vec_items), dim)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    table[:2] = 0
    vectors = ItemVectors(torch.from_numpy(table))
    base = dict(emb_dim=EMB, att_hidden=[80, 40], mlp_hidden=[200, 80], use_position=False, n_tiers=n_tiers)
    t0 = time.perf_counter()
    enc.extra["simtier"] = simtier_features(enc, vectors.table, n_tiers, L)
    pre = (time.perf_counter() - t0) / len(enc) * 1e6
    runners = {"id": MmrankRunner(enc, space, CtrConfig(**base)),
               "simtier_in_model": MmrankRunner(
                   enc, space, CtrConfig(strategy="simtier", simtier_in="model", **base), vectors),
               "simtier_in_pipeline": MmrankRunner(
                   enc, space, CtrConfig(strategy="simtier", simtier_in="pipeline", **base), vectors)}
    n = min(n_rows, len(enc))
    interleave(runners, n, chunks)
    enc.extra.pop("simtier")
    steps = (n + BATCH - 1) // BATCH
    out = {k: r.train_s / steps for k, r in runners.items()}
    out["pipeline_precompute_s_per_1M_rows"] = pre
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--cats", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--act", default="prelu", help="activation of both models (DeepCTR's default is Dice)")
    ap.add_argument("--full-history", action="store_true", help=f"every history has L = {L} clicks")
    ap.add_argument("--skip-deepctr", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile_attention runner")
    ap.add_argument("--warmup", type=int, default=3000, help="rows each runner trains and predicts untimed first")
    ap.add_argument("--chunks", type=int, default=10, help="turns the models take (interleaved timing)")
    ap.add_argument("--simtier-rows", type=int, default=200_000)
    ap.add_argument("--vec-dim", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where both models run (default cpu)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = resolve_device(args.device)
    gpu = DEVICE.type == "cuda"
    torch.set_num_threads(args.threads)
    roofs = machine(device=DEVICE)
    print(machine_line(roofs, DEVICE))
    if gpu:
        print(f"device {describe(DEVICE)}: mmrank's DIN under bf16 autocast (fp32 master weights, batches "
              f"pinned, non-blocking copies); DeepCTR-Torch's DIN in fp32 on the same GPU (device= in its "
              f"constructor, its fit/predict move the data); timings synchronised")
    rows = make_rows(args.rows, args.items, args.users, args.cats, args.full_history)
    data, space, enc = to_encoded(rows)
    print(f"rows {args.rows:,}  mean history length {rows['len'].mean():.1f}  threads {args.threads}  "
          f"activation {args.act}")
    cfg = CtrConfig(emb_dim=EMB, att_hidden=[80, 40], mlp_hidden=[200, 80], act=args.act, use_position=False)
    runners = {"mmrank": MmrankRunner(enc, space, cfg)}
    if not args.no_compile:
        runners["mmrank compiled"] = MmrankRunner(enc, space, cfg.model_copy(update={"compile_attention": True}))
        runners["mmrank compiled bf16"] = MmrankRunner(
            enc, space, cfg.model_copy(update={"compile_attention": True, "attention_bf16": True}))
    if not args.skip_deepctr:
        runners["deepctr"] = DeepCtrRunner(rows, args.act)
    warm = np.arange(min(args.warmup, len(enc)))
    for name, r in runners.items():  # first calls (torch.compile builds its graph here): not timed
        t0 = time.perf_counter()
        r.train_rows(warm)
        r.predict_rows(warm)
        r.train_s = r.infer_s = 0.0
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s on {len(warm):,} rows")
    interleave(runners, len(enc), args.chunks)
    n = len(enc)
    dc = None
    if not args.skip_deepctr:
        dc = n / runners["deepctr"].train_s, n / runners["deepctr"].infer_s
        print(f"DeepCTR-Torch DIN train {dc[0]:10,.0f} samples/s   inference {dc[1]:10,.0f} samples/s")
    for name in ("mmrank", "mmrank compiled", "mmrank compiled bf16"):
        if name not in runners:
            continue
        mm_tr, mm_inf = n / runners[name].train_s, n / runners[name].infer_s
        print(f"{name} DIN  train {mm_tr:10,.0f} samples/s   inference {mm_inf:10,.0f} samples/s")
        if gpu:  # bf16 autocast: every matmul of the model at the bf16 roof
            (f_tr, f_inf), roof_tr, roof_inf, prec = din_flops(runners[name]), roofs["bf16"], roofs["bf16"], "bf16"
        elif name.endswith("bf16"):  # the attention's FLOPs at the bf16 roof, the rest at fp32
            (f_tr, f_inf), (a_tr, a_inf) = attention_flops(runners[name])
            roof_tr, roof_inf, prec = mixed_roof(roofs, f_tr, a_tr), mixed_roof(roofs, f_inf, a_inf), "mixed fp32/bf16"
            print(f"  ({a_tr / f_tr:.0%} of the training FLOPs are the attention's, in bf16: the limit "
                  f"below is the mix of the two roofs, {roof_tr:,.0f} GFLOP/s)")
        else:
            (f_tr, f_inf), roof_tr, roof_inf, prec = din_flops(runners[name]), roofs["fp32"], roofs["fp32"], "fp32"
        print(roofline_line(f"{name} DIN train", mm_tr, f_tr, roof_tr, prec))
        print(roofline_line(f"{name} DIN inference", mm_inf, f_inf, roof_inf, prec))
        alone_tr, alone_inf = matmuls_alone(runners[name])
        print(f"  its matmuls alone, replayed at their own shapes: train {alone_tr:,.0f} samples/s "
              f"({alone_tr * f_tr / 1e9 / roof_tr:.0%} of the limit), inference {alone_inf:,.0f} samples/s "
              f"({alone_inf * f_inf / 1e9 / roof_inf:.0%}); the measured step reaches {mm_tr / alone_tr:.0%} / "
              f"{mm_inf / alone_inf:.0%} of that")
        if dc is not None:
            print(f"ratio {name} / DeepCTR-Torch: train {mm_tr / dc[0]:.2f}x   inference "
                  f"{mm_inf / dc[1]:.2f}x (issue 13's targets: train >= 2.5x, inference >= 3x)")
    st = simtier_step_times(enc, space, args.simtier_rows, args.vec_dim)
    print(f"step time (batch {BATCH}, {args.vec_dim}-d representations): id {st['id'] * 1e3:.1f} ms, "
          f"+SimTier in model {st['simtier_in_model'] * 1e3:.1f} ms "
          f"({100 * (st['simtier_in_model'] / st['id'] - 1):+.1f}%), "
          f"+SimTier from pipeline (the default) {st['simtier_in_pipeline'] * 1e3:.1f} ms "
          f"({100 * (st['simtier_in_pipeline'] / st['id'] - 1):+.1f}%); pipeline precompute "
          f"{st['pipeline_precompute_s_per_1M_rows']:.1f} s per 1M rows (target: SimTier <= +10%)")


if __name__ == "__main__":
    main()
