"""CTR, re-ranking and post-training on a device (issue 30): an explicit ``cpu`` gives the default's
numbers, a CUDA device this machine lacks is one line and exit 2 before any data is read, and (on a
machine with CUDA, ``gpu`` tests) one DIN step and one re-ranker step on CUDA under bf16 autocast match
the same step on the CPU from the same weights and batch.

bf16 tolerance of the ``gpu`` tests: bf16 keeps 8 bits of mantissa (a relative rounding error of
2^-9, about 3 significant digits, per matmul input); through the attention unit's and the head's MLPs
(forward, then backward) the loss agrees to 2% relative and each parameter's gradient to a cosine
similarity of at least 0.98 and a relative (L2) error of at most 15%.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmrank.ctr.data import iter_batches
from mmrank.ctr.models import CtrConfig, CtrModel, MakeConfig
from mmrank.ctr.trainer import TrainConfig, make_optimizer, predict, train
from mmrank.device import DeviceError, HardwareConfig, autocast, batch_to
from mmrank.testing.ctr import planted_batches, synthetic_run

torch.set_num_threads(2)
NO_CUDA = not torch.cuda.is_available()
SMALL = CtrConfig(emb_dim=8, att_hidden=[16, 8], mlp_hidden=[32, 16], n_tiers=10, history_len=20,
                  make=MakeConfig(proj_dim=8, att_hidden=[16, 8], mlp_hidden=[32, 16, 8]))
CPU = HardwareConfig(device="cpu")

# bf16 tolerances (see the module docstring)
LOSS_RTOL = 2e-2
GRAD_COS = 0.98
GRAD_RTOL = 0.15


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_batches(tmp_path_factory.mktemp("ctrdev"), n_rows=3000, n_items=200, n_users=150, seed=4)


@pytest.fixture(scope="module")
def lists_run(tmp_path_factory):
    from mmrank.testing.lists import write_tiny_lists

    return write_tiny_lists(tmp_path_factory.mktemp("lists"), n_requests=120, seed=5)


def _model(strategy: str, sizes, vecs) -> CtrModel:
    torch.manual_seed(0)
    cfg = CtrConfig.model_validate({**SMALL.model_dump(), "strategy": strategy})
    return CtrModel(cfg, sizes, vecs if cfg.uses_vectors else None)


# ------------------------------------------------------------------ the CPU: explicit cpu = the default


def test_ctr_explicit_cpu_trains_and_predicts_the_defaults_numbers(planted):
    """The trainer with device=cpu (and bf16 on, which the CPU ignores) = the trainer without one:
    identical losses and identical click probabilities, for the ID model and simtier+make (MAKE
    trained jointly, SimTier computed in the model)."""
    _, enc, sizes, vecs = planted
    rows = enc.train_rows()[:1024]
    tcfg = TrainConfig(batch_size=256)
    for strategy in ("id", "simtier+make"):
        a, b = _model(strategy, sizes, vecs), _model(strategy, sizes, vecs)
        sa = train(a, enc, rows, cfg=tcfg, progress=False)
        sb = train(b, enc, rows, cfg=tcfg, progress=False, device=torch.device("cpu"), bf16=True)
        assert sa["loss"] == sb["loss"], strategy
        test = enc.test_rows()[:512]
        pa, pb = predict(a, enc, test), predict(b, enc, test, device=torch.device("cpu"))
        assert pa.dtype == pb.dtype == np.float64
        np.testing.assert_array_equal(pa, pb)


def test_ctr_stage_on_cpu_equals_default_and_records_the_device(tmp_path):
    from mmrank.ctr.stage import train_strategy

    run = synthetic_run(tmp_path / "run", n_rows=2000, n_users=100)
    kw = dict(make_epochs=1, cfg=SMALL, train_cfg=TrainConfig(batch_size=256), progress=False)
    default = train_strategy(run, "simtier+make", **kw)
    explicit = train_strategy(run, "simtier+make", hardware=CPU, **kw)
    for k in ("auc", "gauc", "logloss"):
        assert default[k] == explicit[k], k
    assert explicit["device"].startswith("cpu (")
    saved = json.loads((run / "ctr" / "simtier+make" / "metrics.json").read_text())
    assert saved["device"] == explicit["device"]


def test_rerank_explicit_cpu_equals_default_and_records_the_device(lists_run):
    from mmrank.rerank.trainer import RerankTrainConfig, fit, load_data, predict as rr_predict
    from mmrank.store.tiny_encoder import TinyItemEncoder

    data = load_data(lists_run, encoder=TinyItemEncoder(dim=8))
    tcfg = RerankTrainConfig(batch_size=32)
    rows = data.lists.test_rows()[:20]
    for name in ("armmt", "dnn-ips"):   # the logged multi-task loss and the counterfactual one
        ma, ia = fit(data, name, train_cfg=tcfg, progress=False)
        mb, ib = fit(data, name, train_cfg=tcfg, progress=False, hardware=CPU)
        assert ia["loss"] == ib["loss"], name
        _, sa = rr_predict(ma, data, rows, "all")
        _, sb = rr_predict(mb, data, rows, "all", device=torch.device("cpu"))
        for x, y in zip(sa["rank"], sb["rank"]):
            np.testing.assert_array_equal(x, y)
    from mmrank.rerank.stage import train_model

    m = train_model(lists_run, "dnn", train_cfg=tcfg, encoder=TinyItemEncoder(dim=8), progress=False,
                    one_thread_if_busy=False, hardware=CPU)
    assert m["device"].startswith("cpu (")
    assert json.loads((lists_run / "rerank" / "dnn" / "metrics.json").read_text())["device"] == m["device"]


def test_posttrain_adapter_on_cpu_equals_default():
    from mmrank.posttrain.config import PosttrainConfig
    from mmrank.posttrain.train import train_adapter

    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    pairs = {"session": (rng.integers(0, 40, 64), rng.integers(0, 40, 64)),
             "next": (rng.integers(-1, 40, (64, 3)), rng.integers(0, 40, 64))}
    cfg = PosttrainConfig(epochs=2, batch_size=16, hidden=8)
    ma, ha = train_adapter(base, pairs, cfg, progress=False)
    mb, hb = train_adapter(base, pairs, cfg, progress=False, device=torch.device("cpu"), bf16=True)
    assert ha["epochs"] == hb["epochs"] and ha["after"] == hb["after"]
    v = torch.from_numpy(base)
    assert torch.equal(ma.adapt(v), mb.adapt(v))


# ------------------------------------------------- a CUDA device this machine lacks: one line, exit 2


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("args", [
    ["ctr", "compare", "--run", "R"], ["ctr", "predict", "--run", "R", "--strategy", "id", "--samples", "S",
                                       "--out", "O"],
    ["ctr", "follow", "--run", "R"], ["rerank", "compare", "--run", "R"],
    ["rerank", "apply", "--run", "R", "--lists", "L"], ["posttrain", "--run", "R"]])
def test_every_command_refuses_cuda_before_reading_data(tmp_path, args):
    from mmrank.cli import app

    args = [str(tmp_path / a) if a in ("R", "S", "O", "L") else a for a in args]
    res = CliRunner().invoke(app, [*args, "--device", "cuda:1"])
    assert isinstance(res.exception, DeviceError), res.output
    assert "device cuda:1" in str(res.exception)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_the_run_configs_hardware_section_is_honoured_and_the_flag_wins(tmp_path):
    from mmrank.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("hardware: {device: cuda}\n")
    res = CliRunner().invoke(app, ["rerank", "train", "--run", str(tmp_path / "R"), "--config", str(cfg)])
    assert isinstance(res.exception, DeviceError) and "device cuda:" in str(res.exception)
    res = CliRunner().invoke(app, ["ctr", "predict", "--run", str(tmp_path / "R"), "--strategy", "id",
                                   "--samples", "S", "--out", "O", "--config", str(cfg), "--device", "cpu"])
    assert not isinstance(res.exception, DeviceError)   # --device cpu wins; it fails later, on the data
    assert res.exit_code != 0


def test_cli_ctr_train_device_cpu_equals_no_flag(tmp_path):
    from mmrank.cli import app

    run = synthetic_run(tmp_path / "run", n_rows=1500, n_users=80)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ctr:\n  model: {emb_dim: 8, att_hidden: [16, 8], mlp_hidden: [32, 16], history_len: 20}\n"
                   "  train: {batch_size: 256}\n")
    got = []
    for extra in ([], ["--device", "cpu"]):
        res = CliRunner().invoke(app, ["ctr", "train", "--run", str(run), "--strategy", "simtier",
                                       "--make-epochs", "0", "--config", str(cfg), *extra])
        assert res.exit_code == 0, res.output
        got.append(json.loads((run / "ctr" / "simtier" / "metrics.json").read_text()))
    assert {k: got[0][k] for k in ("auc", "gauc", "logloss")} == {k: got[1][k] for k in ("auc", "gauc", "logloss")}
    assert got[1]["device"].startswith("cpu")


# ------------------------------------------------------------------------ on CUDA (skipped here)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).detach().float().cpu()
            for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(cpu: dict[str, torch.Tensor], gpu: dict[str, torch.Tensor]) -> None:
    assert cpu.keys() == gpu.keys()
    for n in cpu:
        a, b = cpu[n].flatten(), gpu[n].flatten()
        if a.norm() < 1e-8:
            assert b.norm() < 1e-4, n
            continue
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
        assert cos >= GRAD_COS, (n, float(cos))
        assert (a - b).norm() / a.norm() <= GRAD_RTOL, n


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["id", "simtier+make"])
def test_din_step_on_cuda_matches_the_cpu_within_bf16(planted, strategy):
    _, enc, sizes, vecs = planted
    cpu_model = _model(strategy, sizes, vecs)
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    batch = next(iter_batches(enc, enc.train_rows()[:512], 512, history_len=20))
    dev = torch.device("cuda")
    out = {}
    for name, model, d in (("cpu", cpu_model, torch.device("cpu")), ("cuda", gpu_model, dev)):
        model.train()
        b = batch_to(batch, d)
        with autocast(d, bf16=True):
            loss = model.loss(model(b), b)["total"]
        loss.backward()
        out[name] = (float(loss.float()), _grads(model))
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=LOSS_RTOL)
    _assert_close_grads(out["cpu"][1], out["cuda"][1])
    # the optimiser steps on the device: fused Adam on dense, LazyAdam on the sparse tables
    make_optimizer(gpu_model, TrainConfig()).step()
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in gpu_model.parameters())


@pytest.mark.gpu
def test_ctr_train_on_cuda_with_compiled_attention(planted):
    """train()/predict() on CUDA (bf16 autocast, the attention unit through torch.compile) learn what
    the CPU learns: the test AUC within 0.03."""
    from mmrank.eval import auc

    data, enc, sizes, vecs = planted
    cfg = CtrConfig.model_validate({**SMALL.model_dump(), "strategy": "simtier", "compile_attention": True})
    y = data.label[enc.test_rows()].astype(np.int64)
    res = {}
    for d in ("cpu", "cuda"):
        torch.manual_seed(0)
        m = CtrModel(cfg if d == "cuda" else SMALL.model_copy(update={"strategy": "simtier"}), sizes, vecs)
        train(m, enc, cfg=TrainConfig(batch_size=256), progress=False, device=torch.device(d))
        assert next(m.parameters()).device.type == d
        res[d] = auc(y, predict(m, enc, device=torch.device(d)))
    assert abs(res["cuda"] - res["cpu"]) < 0.03


@pytest.mark.gpu
def test_rerank_step_on_cuda_matches_the_cpu_within_bf16(lists_run):
    from mmrank.rerank.trainer import batch_for, build_model, load_data
    from mmrank.rerank.models import model_config
    from mmrank.store.tiny_encoder import TinyItemEncoder

    data = load_data(lists_run, encoder=TinyItemEncoder(dim=8))
    torch.manual_seed(0)
    cpu_model = build_model(data, model_config("armmt"))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    rows = [int(r) for r in data.lists.train_rows()
            if (data.lists.position[data.lists.candidates(int(r))] >= 0).any()][:32]
    rows = np.asarray(rows, np.int64)
    out = {}
    for name, model, d in (("cpu", cpu_model, torch.device("cpu")), ("cuda", gpu_model, torch.device("cuda"))):
        model.train()
        batch = batch_for(data, rows, "shown", device=d)
        with autocast(d, bf16=True):
            o = model(batch)
            terms = model.loss({t: v.float().reshape(-1) for t, v in o.items()},
                               {t: batch[t].reshape(-1) for t in model.cfg.tasks}, ~batch["pad"].reshape(-1))
        terms["total"].backward()
        out[name] = (float(terms["total"].float()), _grads(model))
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=LOSS_RTOL)
    _assert_close_grads(out["cpu"][1], out["cuda"][1])
