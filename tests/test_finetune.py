"""End-to-end fine-tuning (the scl-finetune row, issue 30 part 4): the backbones train from pixels and
tokens, frozen layers stay put, param groups carry their own lrs, augmentation only in training, the
exported encoder embeds as the model does, and gradient checkpointing changes no gradient."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmrank.errors import ConfigError
from mmrank.pretrain.config import TABLE2, VARIANTS, PretrainConfig
from mmrank.testing.pretrain import tiny_bert

torch.set_num_threads(1)
SIZE = 32
# a 2-layer BERT; its last layer trains, layer 0 and the embeddings stay frozen
FT = dict(variant="scl-finetune", finetune_text_layers=1, dim=32, nested_dims=[8, 32], hidden=64,
          batch_size=32, queue_size=128, epochs=1, warmup_steps=2, finetune_warmup_steps=4,
          lr=1e-3, finetune_image_lr=1e-3, finetune_text_lr=1e-3)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def finetuned(tiny_market: Path, bert_dir: Path, tmp_path_factory) -> Path:
    """The tiny market after `mmrank pretrain --variant scl-finetune --max-steps 3`."""
    from mmrank.cli import app

    run = tmp_path_factory.mktemp("finetune") / "run"
    shutil.copytree(tiny_market, run)
    cfg = run / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"pretrain": {k: v for k, v in FT.items() if k != "variant"}}))
    res = CliRunner().invoke(app, ["pretrain", "--run", str(run), "--variant", "scl-finetune",
                                   "--max-steps", "3", "--config", str(cfg), "--image-size", str(SIZE),
                                   "--image-encoder", "efficientnet-lite0",
                                   "--text-encoder", f"hf-bert:{bert_dir}"])
    assert res.exit_code == 0, res.output
    return run


def test_variant_is_registered_but_not_a_default_table2_row():
    assert "scl-finetune" in VARIANTS and "scl-finetune" not in TABLE2
    use = PretrainConfig(variant="scl-finetune").uses()
    assert use == PretrainConfig(variant="scl").uses()  # SCL's loss terms
    assert PretrainConfig(variant="scl-finetune").end_to_end()
    assert not PretrainConfig(variant="scl").end_to_end()


def test_cli_trains_image_stem_and_last_text_layer_only(finetuned, bert_dir):
    from mmrank.encoders.image import EfficientNetLite0

    w = load_file(str(finetuned / "encoder" / "weights.safetensors"))
    fresh = EfficientNetLite0(SIZE, full=True).tail.state_dict()
    stem = w["model.image_tail.conv_stem.weight"]
    assert stem.shape == fresh["conv_stem.weight"].shape
    assert not torch.allclose(stem, fresh["conv_stem.weight"])          # the first conv trained
    assert not torch.allclose(w["model.image_tail.blocks.15._project_conv.weight"],
                              fresh["blocks.15._project_conv.weight"])  # so did the last block

    bert0 = load_file(str(bert_dir / "model.safetensors"))
    text = {k[len("model.text_tail.bert."):]: v for k, v in w.items()
            if k.startswith("model.text_tail.bert.")}
    assert text
    frozen = [k for k in text if k.startswith(("embeddings.", "encoder.layer.0."))]
    trained = [k for k in text if k.startswith("encoder.layer.1.") and k.endswith("weight")]
    assert frozen and trained
    for k in frozen:  # the frozen layers are exactly the loaded ones
        torch.testing.assert_close(text[k], bert0[k], rtol=0, atol=0)
    assert all(not torch.equal(text[k], bert0[k]) for k in trained if "LayerNorm" not in k)

    import json

    cfg = json.loads((finetuned / "encoder" / "config.json").read_text())
    assert cfg["image_finetune"] is True and cfg["text_finetune_layers"] == 1
    assert cfg["d_text"] == 32 and cfg["d_image"] == 1280
    metrics = json.loads((finetuned / "encoder" / "metrics.json").read_text())
    assert 0.0 <= metrics["acc@1"]["image"] <= 1.0 and 0.0 <= metrics["acc@1"]["text"] <= 1.0
    assert (finetuned / "features" / f"pixels_{SIZE}px" / "items.npy").exists()
    assert np.load(finetuned / "features" / f"pixels_{SIZE}px" / "items.npy").dtype == np.uint8


def test_embed_gives_the_models_own_item_vectors(finetuned):
    from mmrank.cli import app
    from mmrank.pretrain.data import read_catalog, read_pairs
    from mmrank.pretrain.finetune import prepare_inputs
    from mmrank.pretrain.item_encoder import load_item_encoder
    from mmrank.store.backends import open_table

    enc = load_item_encoder(finetuned)
    assert enc.cached_item_features(finetuned) is None  # never the frozen backbones' cache
    res = CliRunner().invoke(app, ["embed", "--run", str(finetuned)])
    assert res.exit_code == 0, res.output
    cat = read_catalog(finetuned)
    cfg = PretrainConfig(**{**FT, "text_encoder": enc.config["text_encoder"], "image_size": SIZE})
    feats = prepare_inputs(finetuned, cat, read_pairs(finetuned, cat), cfg, SIZE).feats
    with torch.no_grad():
        own = enc.model.item(feats.item_img, feats.item_txt).numpy()
    table = open_table(finetuned / "embeddings")
    try:
        got = table.get(cat.item_ids, missing="zero")
    finally:
        table.close()
    np.testing.assert_allclose(got, own, atol=1e-5)


def _tails(bert_dir: Path):
    from mmrank import encoders

    img, _ = encoders.create_tower("efficientnet-lite0", "image", image_size=SIZE, full=True)
    txt, pre = encoders.create_tower(f"hf-bert:{bert_dir}", "text", trainable_blocks=1)
    return img.tail, txt.tail, pre


def test_param_groups_carry_their_own_lr_and_warmup(bert_dir):
    from mmrank.pretrain.finetune import param_groups
    from mmrank.pretrain.model import SCLModel
    from mmrank.pretrain.train import Objective, lr_at

    cfg = PretrainConfig(**{**FT, "finetune_image_lr": 1e-4, "finetune_text_lr": 2e-5})
    img, txt, _ = _tails(bert_dir)
    model = SCLModel(1280, 32, 32, 64, img, text_tail=txt)
    groups = param_groups(cfg, model, Objective(cfg))
    assert [(g.name, g.lr, g.warmup) for g in groups] == [
        ("heads", 1e-3, 2), ("image", 1e-4, 4), ("text", 2e-5, 4)]
    ids = {g.name: {id(p) for p in g.params} for g in groups}
    assert ids["image"] == {id(p) for p in img.parameters()}  # stem included
    assert ids["text"] == {id(p) for p in txt.bert.encoder.layer[1].parameters()}
    assert not ids["heads"] & (ids["image"] | ids["text"])
    assert id(model.g_img.proj.weight) in ids["heads"]
    # each its own warm-up, then the same cosine
    assert lr_at(cfg, 0, 100, 1e-3, 2) == pytest.approx(5e-4)
    assert lr_at(cfg, 0, 100, 1e-4, 4) == pytest.approx(2.5e-5)
    assert lr_at(cfg, 3, 100, 1e-4, 4) == pytest.approx(1e-4)
    assert lr_at(cfg, 100, 100, 1e-4, 4) == pytest.approx(1e-5)
    # every other row: one group, as before
    scl = PretrainConfig(variant="scl", dim=32, nested_dims=[8, 32], hidden=64)
    m = SCLModel(16, 8, 32, 64)
    (one,) = param_groups(scl, m, Objective(scl))
    assert (one.name, one.lr, one.warmup) == ("heads", scl.lr, scl.warmup_steps)
    n_objective = len(list(Objective(scl).parameters()))  # the temperatures
    assert len(one.params) == sum(p.requires_grad for p in m.parameters()) + n_objective


def test_trainer_steps_each_group_at_its_scheduled_lr(bert_dir, monkeypatch):
    from mmrank.pretrain.data import Features, PairTable
    from mmrank.pretrain.finetune import configure_tails
    from mmrank.pretrain.train import lr_at, train

    seen: list[list[float]] = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    img, txt, pre = _tails(bert_dir)
    cfg = PretrainConfig(**{**FT, "finetune_image_lr": 1e-4, "finetune_text_lr": 2e-5,
                            "batch_size": 8, "max_steps": 3, "queue_size": 16})
    configure_tails(cfg, img, txt)
    g = torch.Generator().manual_seed(0)
    n = 24
    px = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    from mmrank.pretrain.finetune import tokens

    words = [f"item {i} colour {i % 5}" for i in range(n)]
    tok = tokens(pre, words)
    feats = Features(px, tok, tok, px, np.arange(n))
    pairs = PairTable(modality=(np.arange(n) % 2).astype(np.int8), query_text=words, query_image=words,
                      pos=np.arange(n), neg=np.full(n, -1), test=np.zeros(n, bool), ts=np.arange(n))
    before = txt.bert.encoder.layer[0].attention.self.query.weight.clone()
    train(cfg, feats, pairs, np.arange(n, dtype=np.int64), image_tail=img, text_tail=txt,
          log=lambda m: None)
    total = 3
    want = [[lr_at(cfg, s, total, lr, w) for lr, w in ((1e-3, 2), (1e-4, 4), (2e-5, 4))]
            for s in range(3)]
    assert len(seen) == 3 and sum(seen, []) == pytest.approx(sum(want, []))
    assert torch.equal(txt.bert.encoder.layer[0].attention.self.query.weight, before)


def test_augmentation_differs_between_steps_and_is_absent_at_eval():
    from mmrank.encoders.image import CnnSmall
    from mmrank.pretrain.finetune import PhotoAugment

    x = torch.rand(4, 3, SIZE, SIZE)
    aug = PhotoAugment(0.5)
    torch.manual_seed(0 * 1_000_003 + 0)  # the trainer's seeds of steps 0 and 1
    a = aug(x)
    torch.manual_seed(0 * 1_000_003 + 1)
    b = aug(x)
    assert a.shape == x.shape and not torch.allclose(a, b)
    # the whole photo kept (scale 1, square): the photo itself or its mirror image, nothing else
    full = PhotoAugment(1.0, ratio=(1.0, 1.0))(x)
    for i in range(4):
        assert (torch.allclose(full[i], x[i], atol=1e-5)
                or torch.allclose(full[i], x[i].flip(-1), atol=1e-5))

    net = CnnSmall(SIZE, full=True).tail
    px = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    net.eval()
    with torch.no_grad():
        plain = net(px)
        net.augment = PhotoAugment(0.5)
        torch.manual_seed(0)
        e1 = net(px)
        torch.manual_seed(1)
        e2 = net(px)
    torch.testing.assert_close(e1, plain, rtol=0, atol=0)  # eval: no augmentation
    torch.testing.assert_close(e2, plain, rtol=0, atol=0)
    net.train()
    with torch.no_grad():
        torch.manual_seed(0)
        t1 = net(px)
        net.augment = None
        torch.manual_seed(0)
        t0 = net(px)
    assert not torch.allclose(t1, t0)  # training: augmented


def _grads(module: torch.nn.Module, x: torch.Tensor, ckpt: bool) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    if hasattr(module, "set_grad_checkpointing"):
        module.set_grad_checkpointing(ckpt)
    else:
        module.grad_checkpointing = ckpt
    torch.manual_seed(7)  # the same dropout / drop-connect draws in both runs
    out = module(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_gradients(bert_dir):
    img, txt, pre = _tails(bert_dir)
    img.train()
    px = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
    bn = img.blocks[3]._bn1
    stats = bn.running_mean.clone()
    plain = _grads(img, px, False)
    after_plain = bn.running_mean.clone()
    bn.running_mean.copy_(stats)
    ck = _grads(img, px, True)
    assert plain.keys() == ck.keys() and "conv_stem.weight" in plain
    for k in plain:
        torch.testing.assert_close(ck[k], plain[k], rtol=1e-5, atol=1e-5)
    # the recomputation does not count the batch twice in the batch-norm statistics
    torch.testing.assert_close(bn.running_mean, after_plain, rtol=0, atol=1e-7)

    txt.train()
    from mmrank.pretrain.finetune import tokens

    tok = tokens(pre, ["red cotton shirt", "blue jeans slim fit", "a"])
    plain, ck = _grads(txt, tok, False), _grads(txt, tok, True)
    assert plain.keys() == ck.keys() and plain
    assert all(k.startswith("bert.encoder.layer.1.") for k in plain)  # nothing frozen got a grad
    for k in plain:
        torch.testing.assert_close(ck[k], plain[k], rtol=1e-5, atol=1e-5)


def test_text_tail_is_sentence_transformers_pooling(bert_dir):
    from mmrank import encoders

    frozen, pre = encoders.create_tower(f"hf-bert:{bert_dir}", "text")
    tuned, _ = encoders.create_tower(f"hf-bert:{bert_dir}", "text", trainable_blocks=-1)
    texts = ["red cotton shirt", "blue"]
    tuned.eval()
    with torch.no_grad():
        a = frozen(pre(texts))
        b = tuned(pre(texts))  # padded to the batch, packed, cut to the longest, pooled
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in tuned.tail.bert.embeddings.parameters())  # -1: all


def test_bad_configs_are_clear_errors(bert_dir, tmp_path):
    from mmrank import encoders
    from mmrank.pretrain.finetune import check

    with pytest.raises(ConfigError, match="trainable_blocks"):
        check(PretrainConfig(variant="scl-finetune", trainable_blocks=2))
    with pytest.raises(ConfigError, match="hash-bow"):
        check(PretrainConfig(variant="scl-finetune", text_encoder="hash-bow"))
    check(PretrainConfig(variant="scl-finetune", text_encoder="hash-bow", finetune_text_layers=0))
    with pytest.raises(ConfigError, match="coaug"):
        check(PretrainConfig(variant="scl-finetune", coaug=True))
    with pytest.raises(ConfigError, match="expected 1..2"):
        encoders.create_tower(f"hf-bert:{bert_dir}", "text", trainable_blocks=3)
    with pytest.raises(ConfigError, match="hf-bert needs a directory"):
        encoders.create("hf-bert")
    with pytest.raises(ConfigError, match="config.json not found"):
        encoders.create(f"hf-bert:{tmp_path}")
    with pytest.raises(ConfigError, match="hash-bow has no weights"):
        encoders.create("hash-bow", trainable_blocks=1)


def test_other_rows_keep_their_checkpoint_digest():
    from mmrank.pretrain.train import config_digest

    scl = PretrainConfig(variant="scl")
    assert config_digest(scl) == config_digest(scl.model_copy(update={"finetune_image_lr": 0.5}))
    ft = PretrainConfig(variant="scl-finetune")
    assert config_digest(ft) != config_digest(ft.model_copy(update={"finetune_image_lr": 0.5}))


@pytest.mark.gpu
def test_tails_on_cuda_in_bf16_match_the_cpu(bert_dir):
    """The fine-tuned tails on CUDA under bf16 autocast (fp32 master weights) against the CPU in
    float32, from the same weights and batch: outputs and gradients agree to a bf16 tolerance (all
    gradients: 2e-2 relative; each tensor: 0.1), and the augmentation runs on the device."""
    import copy

    from mmrank.device import autocast, resolve_device
    from mmrank.pretrain.finetune import PhotoAugment, tokens

    dev = resolve_device("cuda")
    img, txt, pre = _tails(bert_dir)
    px = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
    tok = tokens(pre, ["red cotton shirt", "blue jeans slim fit", "a", "black leather shoes"])
    for tail, x in ((img, px), (txt, tok)):
        tail.eval()  # no dropout / batch statistics: the two devices see the same function
        gpu = copy.deepcopy(tail).to(dev)
        out = {}
        for name, net, inp in (("cpu", tail, x), ("cuda", gpu, x.to(dev))):
            net.zero_grad(set_to_none=True)
            with autocast(inp.device, True):
                y = net(inp)
            w = torch.linspace(-1, 1, y.shape[1], device=y.device)
            (y.float() * w).sum().backward()
            out[name] = (y.detach().float().cpu(),
                         {k: p.grad.detach().float().cpu() for k, p in net.named_parameters()
                          if p.grad is not None})
            assert all(p.dtype == torch.float32 for p in net.parameters())
        (y_cpu, g_cpu), (y_gpu, g_gpu) = out["cpu"], out["cuda"]
        assert torch.nn.functional.cosine_similarity(y_cpu, y_gpu, dim=1).min() > 0.99
        assert g_cpu.keys() == g_gpu.keys() and g_cpu
        flat_c = torch.cat([g_cpu[k].flatten() for k in g_cpu])
        flat_g = torch.cat([g_gpu[k].flatten() for k in g_cpu])
        assert (flat_g - flat_c).norm() / flat_c.norm() < 2e-2
        for k in g_cpu:  # each tensor (a deep net in bf16: looser)
            err = (g_gpu[k] - g_cpu[k]).norm() / g_cpu[k].norm().clamp_min(1e-12)
            assert err < 0.1 or g_cpu[k].norm() < 1e-6, (k, float(err))
    aug = PhotoAugment(0.5)
    torch.manual_seed(0)
    a = aug(torch.rand(4, 3, SIZE, SIZE, device=dev))
    assert a.device.type == "cuda" and a.shape == (4, 3, SIZE, SIZE)


def test_device_flag_cpu_trains_the_same_weights_and_cuda_is_one_line(finetuned, tiny_market,
                                                                     bert_dir, tmp_path):
    from mmrank.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_market, run)
    args = ["pretrain", "--run", str(run), "--variant", "scl-finetune", "--max-steps", "3",
            "--config", str(finetuned / "ft.yaml"), "--image-size", str(SIZE),
            "--image-encoder", "efficientnet-lite0", "--text-encoder", f"hf-bert:{bert_dir}"]
    if not torch.cuda.is_available():  # refused before anything is read (the CLI's main() prints
        from mmrank.device import DeviceError  # it as one line, exit 2: test_pretrain_device.py)

        res = CliRunner().invoke(app, [*args, "--device", "cuda"])
        assert isinstance(res.exception, DeviceError) and "device cuda" in str(res.exception)
        assert not (run / "features").exists()
    res = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    a = load_file(str(finetuned / "encoder" / "weights.safetensors"))
    b = load_file(str(run / "encoder" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the same trajectory, bit for bit
        assert torch.equal(a[k], b[k]), k


def test_throughput_benchmark_runs_small(bert_dir, monkeypatch, capsys):
    """benchmarks/finetune_throughput.py (the GPU check's steps/s of the row) at toy sizes."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import finetune_throughput

    threads = torch.get_num_threads()
    try:
        finetune_throughput.main(["--text-encoder", f"hf-bert:{bert_dir}", "--size", "32",
                                  "--batch-size", "8", "--items", "24", "--steps", "2",
                                  "--rows", "scl,finetune", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()[:1] in (["scl"], ["finetune"])}
    assert set(rows) == {"scl", "finetune"} and all(len(r) == 4 for r in rows.values())
    assert "device: cpu" in out
