"""Pre-training on a device (issue 30): the CPU path unchanged by an explicit device (`--device cuda`
without CUDA: tests/test_device_flags.py), the process group's backend chosen by the device; on a machine with
CUDA (tests marked ``gpu``, skipped without it) a few bf16 steps, and one SCL step on CUDA against
the same step on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mmrank.pretrain.train as train_module
from mmrank.pretrain.augment import AugmentedFeatures
from mmrank.pretrain.clicks import ClickVisualInputs
from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.data import Features, PairTable
from mmrank.pretrain.distributed import DistEnv
from mmrank.pretrain.losses import MomentumQueue
from mmrank.pretrain.train import train

SMALL = dict(dim=32, nested_dims=[8, 32], hidden=32, batch_size=32, queue_size=128, epochs=2,
             warmup_steps=1, click_visual_batch=16, filter_warmup_epochs=1, filter_share=0.2,
             resume=False)


def _data(n_items: int = 120, n_pairs: int = 160, seed: int = 0):
    """Random cached features and pairs (text, image and both queries), augmented views and titles,
    click pairs: every input the trainer's switches read."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    img = torch.randn(n_items, 48, generator=g).abs()
    txt = torch.randn(n_items, 24, generator=g)
    feats = Features(item_img=img, item_txt=txt, text_q=torch.randn(n_pairs, 24, generator=g),
                     image_q=torch.randn(n_pairs, 48, generator=g).abs(), qrow=np.arange(n_pairs),
                     qrow_image=np.arange(n_pairs))
    pairs = PairTable(modality=rng.integers(0, 3, n_pairs).astype(np.int8), query_text=[None] * n_pairs,
                      query_image=[None] * n_pairs, pos=rng.integers(0, n_items, n_pairs),
                      neg=rng.integers(-1, n_items, n_pairs), test=rng.random(n_pairs) < 0.1,
                      ts=np.arange(n_pairs))
    aug = AugmentedFeatures(torch.stack([img, img * 0.9 + 0.1]), torch.stack([txt, txt + 0.05]))
    clicks = ClickVisualInputs(rng.integers(0, n_items, 80), rng.integers(0, n_items, 80),
                               torch.stack([img, img * 1.1, img + 0.2]), np.arange(n_items))
    return feats, pairs, np.arange(n_items, dtype=np.int64) + 1, aug, clicks


def _train(variant: str, steps: int, **kw):
    feats, pairs, ids, aug, clicks = _data()
    report: dict = {}
    cfg = PretrainConfig(variant=variant, max_steps=steps, **SMALL)
    model = train(cfg, feats, pairs, ids, DistEnv(), log=lambda m: None, aug=aug, clicks=clicks,
                  report=report, **kw)
    return model, report


@pytest.mark.parametrize("variant", ["scl", "moon2", "click-visual"])
def test_explicit_cpu_device_gives_bit_identical_weights(variant):
    torch.set_num_threads(1)
    default, rep_d = _train(variant, 4)
    explicit, rep_e = _train(variant, 4, device=torch.device("cpu"), bf16=True)  # bf16: CUDA only
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].device.type == "cpu" and torch.equal(a[k], b[k]), k
    assert rep_d["epochs"] == rep_e["epochs"]  # the logged losses too, to the last bit
    assert all(np.isfinite(v) for r in rep_d["epochs"] for v in r["loss"].values())


def test_losses_compute_in_fp32_under_a_bf16_autocast():
    """Under a bf16 autocast (the CPU's stands in for CUDA's here) the losses take bf16 tower outputs
    and still compute their logits in fp32: the same values as fp32 math on those vectors."""
    from mmrank.pretrain.losses import ClickVisualLoss, InfoNCELoss, TripletLoss

    g = torch.Generator().manual_seed(3)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 32, generator=g), dim=-1)  # noqa: E731
    q, k, n = (unit(16).bfloat16() for _ in range(3))
    ids = torch.arange(16)
    queue = MomentumQueue(32, 64)
    queue.enqueue(unit(64), torch.randint(0, 40, (64,), generator=g))
    nce, trip, cv = InfoNCELoss(nested_dims=(8, 32)), TripletLoss(nested_dims=(8, 32)), ClickVisualLoss()

    def terms() -> dict:
        return {**nce(q, k, queue=queue, q_ids=ids, k_ids=ids), **trip(q, k, n), **cv(q, k, n, q)}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = terms()
    q, k, n = q.float(), k.float(), n.float()
    exact = terms()
    assert mixed.keys() == exact.keys()
    for name, v in mixed.items():
        assert v.dtype == torch.float32 and torch.equal(v, exact[name]), name


def test_dist_env_picks_gloo_for_cpu_and_nccl_for_cuda(monkeypatch):
    import torch.distributed as dist

    made: list[str] = []
    gpus: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: made.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: gpus.append(d))
    cpu = DistEnv.from_env(torch.device("cpu"))
    assert made == ["gloo"] and cpu.backend == "gloo" and (cpu.rank, cpu.world) == (1, 2) and gpus == []
    cuda = DistEnv.from_env(torch.device("cuda"))  # a device object: nothing touches a GPU here
    assert made == ["gloo", "nccl"] and cuda.backend == "nccl"
    assert gpus == [1]                               # the rank's GPU: LOCAL_RANK
    DistEnv.from_env(torch.device("cuda", 0))
    assert gpus[-1] == torch.device("cuda", 0)
    assert DistEnv.from_env().backend == "gloo"      # no device: the CPU, as before
    monkeypatch.setenv("WORLD_SIZE", "1")
    one = DistEnv.from_env(torch.device("cuda"))     # one process: no group is made
    assert (one.rank, one.world) == (0, 1) and one.backend == "nccl"
    assert made == ["gloo", "nccl", "nccl", "gloo"]


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    from mmrank.testing.markets import micro_market

    return micro_market(tmp_path_factory.mktemp("device") / "base")


def test_device_cpu_flag_gives_the_numbers_of_no_flag(market, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from mmrank.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dict(image_encoder="cnn-small", text_encoder="hash-bow", epochs=1,
                                       batch_size=64, queue_size=256, dim=16, nested_dims=[8, 16],
                                       hidden=32, variant="scl", max_steps=3)))
    out = {}
    for name, flag in (("none", []), ("cpu", ["--device", "cpu"])):
        run = tmp_path / name
        (run / "data").mkdir(parents=True)
        for f in ("items.parquet", "pairs.parquet", "query_images.parquet"):
            shutil.copy2(market / "data" / f, run / "data" / f)
        res = CliRunner().invoke(app, ["pretrain", "--run", str(run), "--config", str(cfg), *flag])
        assert res.exit_code == 0, res.output
        out[name] = json.loads((run / "encoder" / "metrics.json").read_text())
    for key in ("acc@1", "acc@5", "nested", "by_item_modality", "epochs"):
        assert out["none"][key] == out["cpu"][key], key
    assert out["cpu"]["device"].startswith("cpu (") and out["none"]["device"] == out["cpu"]["device"]


def test_checkpoint_tensors_are_host_copies_and_load_onto_a_device(tmp_path):
    from mmrank.pretrain.checkpoint import load_checkpoint, save_checkpoint

    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, {"m": lin}, opt, 1)
    other = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.1)
    step, _ = load_checkpoint(tmp_path, {"m": other}, opt2, device=torch.device("cpu"))
    assert step == 1 and torch.equal(other.weight, lin.weight)
    st = next(iter(opt2.state_dict()["state"].values()))
    assert st["step"].device.type == "cpu" and torch.equal(st["exp_avg"], opt.state[lin.weight]["exp_avg"])


# ---- on a GPU (skipped without CUDA) -------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["scl", "moon2", "click-visual"])
def test_cuda_bf16_steps_are_finite_and_the_queue_lives_on_cuda(variant, monkeypatch):
    queues: list[MomentumQueue] = []

    class Recorded(MomentumQueue):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            queues.append(self)

    monkeypatch.setattr(train_module, "MomentumQueue", Recorded)
    dev = torch.device("cuda")
    model, report = _train(variant, 6, device=dev, bf16=True)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    losses = [v for r in report["epochs"] for v in r["loss"].values()]
    assert losses and all(np.isfinite(v) for v in losses), report["epochs"]
    assert len(queues) == 1
    q = queues[0]
    assert {t.device.type for t in (q.keys, q.ids, q.valid, q.ptr)} == {"cuda"}
    assert int(q.valid.sum()) > 0                      # keys were enqueued
    view = q.view((8, 32))                             # the cached prefixes and sorted ids
    assert {t.device.type for t in (*view.keys.values(), view.sorted_ids, view.order)} == {"cuda"}


def _resume_across(first: torch.device, second: torch.device, ckpt: Path):
    """Train 4 steps on ``first`` with checkpoints, then the same config on ``second``: it resumes
    at the last step and returns the weights the file holds."""
    feats, pairs, ids, aug, clicks = _data()
    logs: list[str] = []
    cfg = PretrainConfig(variant="scl", max_steps=4, **{**SMALL, "resume": True})
    a = train(cfg, feats, pairs, ids, DistEnv(), ckpt_dir=ckpt, log=logs.append, device=first)
    b = train(cfg, feats, pairs, ids, DistEnv(), ckpt_dir=ckpt, log=logs.append, device=second)
    assert any(m.startswith("resumed scl") and "at step 4/4" in m for m in logs), logs
    return a, b


def test_checkpoint_resume_restores_the_weights(tmp_path):
    a, b = _resume_across(torch.device("cpu"), torch.device("cpu"), tmp_path)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.gpu
def test_a_cuda_checkpoint_resumes_on_the_cpu(tmp_path):
    a, b = _resume_across(torch.device("cuda"), torch.device("cpu"), tmp_path)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert x.device.type == "cuda" and y.device.type == "cpu" and torch.equal(x.cpu(), y), k


# bf16 tolerance of one SCL step, CUDA (bf16 autocast) against the CPU (fp32), from the same weights
# and batch: the loss within 2% (relative), every gradient within 5% (relative L2 norm of the
# difference) and a cosine of at least 0.99 with the CPU's. bf16 keeps 8 bits of mantissa (0.4% per
# rounding); the towers' few matmuls and the fp32 losses stay well inside these bounds.
LOSS_RTOL, GRAD_RTOL, GRAD_COS = 0.02, 0.05, 0.99


def _one_step(model, objective, queue, batch, device, bf16):
    from mmrank.device import autocast

    q_in, k_img, k_txt, ids = (t.to(device) for t in batch)
    model.zero_grad(set_to_none=True)
    objective.zero_grad(set_to_none=True)
    with autocast(device, bf16):
        q = model.text_query(q_in)
        k = model.item(k_img, k_txt)
        terms = objective.q2i(q, k, queue=queue, q_ids=ids, k_ids=ids)
        terms.update(objective.i2q(k, q, q_ids=ids, k_ids=ids))
        terms.update(objective.triplet(q, k, k.roll(1, 0)))
        loss = sum(terms.values())
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in
             [*model.named_parameters(), *(("obj." + n, p) for n, p in objective.named_parameters())]
             if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.gpu
def test_one_scl_step_on_cuda_matches_the_cpu_within_bf16_tolerance():
    import copy

    from mmrank.pretrain.model import SCLModel
    from mmrank.pretrain.train import Objective

    torch.manual_seed(0)
    cfg = PretrainConfig(dim=64, nested_dims=[16, 64], hidden=128, queue_size=512)
    model, objective = SCLModel(256, 96, 64, 128), Objective(cfg)
    queue = MomentumQueue(64, 512)
    g = torch.Generator().manual_seed(1)
    queue.enqueue(torch.nn.functional.normalize(torch.randn(512, 64, generator=g), dim=-1),
                  torch.randint(0, 400, (512,), generator=g))
    batch = (torch.randn(64, 96, generator=g), torch.randn(64, 256, generator=g).abs(),
             torch.randn(64, 96, generator=g), torch.randint(0, 400, (64,), generator=g))
    dev = torch.device("cuda")
    m_gpu, o_gpu = copy.deepcopy(model).to(dev), copy.deepcopy(objective).to(dev)
    q_gpu = copy.deepcopy(queue).to(dev)
    cpu_loss, cpu_grads = _one_step(model, objective, queue, batch, torch.device("cpu"), False)
    gpu_loss, gpu_grads = _one_step(m_gpu, o_gpu, q_gpu, batch, dev, True)
    assert np.isfinite(gpu_loss), gpu_loss
    assert abs(gpu_loss - cpu_loss) <= LOSS_RTOL * abs(cpu_loss), (gpu_loss, cpu_loss)
    assert cpu_grads.keys() == gpu_grads.keys()
    for n, gc in cpu_grads.items():
        gg = gpu_grads[n]
        scale = gc.norm().clamp_min(1e-12)
        if float(gc.norm()) < 1e-8:        # (a zero-initialised last layer's first gradient)
            assert float(gg.norm()) < 1e-5, n
            continue
        assert float((gg - gc).norm() / scale) <= GRAD_RTOL, n
        assert float(torch.nn.functional.cosine_similarity(gg.flatten(), gc.flatten(), dim=0)) >= GRAD_COS, n
