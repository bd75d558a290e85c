"""The SCL trainer's wiring: what the queue holds, which pairs it reads, where logQ counts come from,
and the popularity reference row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.model import SCLModel
from mmrank.pretrain.train import train
from mmrank.testing.pretrain import latent_pairs

BASE = dict(epochs=1, batch_size=100, dim=32, hidden=32, lr=3e-3, warmup_steps=2, queue_size=400,
            nested_dims=[32], max_steps=6)


def _state(file: Path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(file), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


@pytest.mark.parametrize("key_path", ["online", "momentum"])
def test_queue_holds_momentum_keys(tmp_path: Path, key_path: str) -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=900)
    pairs.test[:] = np.arange(len(pairs.test)) >= 700
    cfg = PretrainConfig(variant="scl-no-triplet", key_path=key_path, momentum=0.9, **BASE)
    online = train(cfg, feats, pairs, ids, ckpt_dir=tmp_path, log=lambda m: None)
    file = tmp_path / "last.safetensors"
    momentum = SCLModel(feats.item_img.shape[1], feats.item_txt.shape[1], cfg.dim, cfg.hidden)
    momentum.load_state_dict(_state(file, "momentum."))
    queue = _state(file, "queue.")
    filled = queue["valid"]
    assert int(filled.sum()) == 400  # 6 steps x 100 keys, wrapped
    rows = queue["ids"][filled]
    keys = queue["keys"][filled]
    last = (torch.arange(400) - int(queue["ptr"])) % 400 >= 300  # the newest 100 slots
    with torch.no_grad():
        by_momentum = momentum.eval().item(feats.item_img[rows], feats.item_txt[rows])
        by_online = online.eval().item(feats.item_img[rows], feats.item_txt[rows])
    gap_online = (keys[last] - by_online[last]).abs().max()
    if key_path == "online":
        # keys of the momentum encoder as saved (updated after the last step)
        torch.testing.assert_close(keys[last], by_momentum[last], atol=1e-5, rtol=1e-4)
    else:
        # MoCo: keys of the momentum encoder *before* its last update, so close to it, not equal
        assert (keys[last] - by_momentum[last]).abs().max() < gap_online
    assert gap_online > 1e-3  # and not the online tower's outputs


@pytest.mark.parametrize("variant", ["scl", "scl-no-triplet-no-moco"])
def test_only_training_pairs_are_read_and_logq_counts_them(variant: str) -> None:
    """Changing every test pair (its positive, its query features) leaves training bit for bit the
    same: the batches, the queue and the logQ counts come from training pairs only."""
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=900)
    pairs.test[:] = np.arange(len(pairs.test)) >= 600
    cfg = PretrainConfig(variant=variant, logq_correction=True, **BASE)
    assert cfg.uses()["logq"]
    a = train(cfg, feats, pairs, ids, log=lambda m: None)
    test = np.flatnonzero(pairs.test)
    pairs.pos[test] = 7            # were they counted, item 7 would dominate log q
    pairs.neg[test] = 8
    feats.text_q[feats.qrow[test]] = 1e3
    feats.image_q[feats.qrow[test]] = -1e3
    b = train(cfg, feats, pairs, ids, log=lambda m: None)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    # ... while a change to one training pair does change it (the test can fail)
    pairs.pos[0] = (pairs.pos[0] + 1) % len(ids)
    c = train(cfg, feats, pairs, ids, log=lambda m: None)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_popularity_reference_row() -> None:
    from mmrank.pretrain.evaluate import popularity

    feats, pairs, _ = latent_pairs(n_items=50, n_pairs=400)
    pairs.test[:] = np.arange(400) >= 300
    pairs.pos[:300] = np.where(np.arange(300) < 200, 3, pairs.pos[:300])  # item 3 bought most
    pairs.pos[300:] = np.where(np.arange(100) < 40, 3, 5)                   # 40% of test buys are 3
    pairs.modality[:] = 0
    res = popularity(pairs)
    assert res["acc@1"]["text"] == pytest.approx(0.40)  # only the most-bought item at rank 1
    assert res["acc@5"]["text"] == pytest.approx(1.0)   # S = {3, 5}: both in the top 5
    assert res["acc@1"]["image"] is None and res["n_test"]["text"] == 100


def test_popularity_breaks_ties_at_random_not_by_catalog_row() -> None:
    """Items bought equally often are tied: Acc@1 is the expected hit (1/2 for two tied items),
    whichever of them the test buys, not 1 for the item that comes first in the catalog."""
    from mmrank.pretrain.evaluate import popularity

    _, pairs, _ = latent_pairs(n_items=50, n_pairs=400)
    pairs.test[:] = np.arange(400) >= 300
    pairs.pos[:300] = np.where(np.arange(300) < 150, 5, 6)     # 5 and 6 bought equally often in training
    pairs.pos[300:] = np.where(np.arange(100) < 90, 5, 6)      # the test buys mostly 5 (the lower row)
    pairs.modality[:] = 0
    res = popularity(pairs)
    assert res["acc@1"]["text"] == pytest.approx(0.5)
    assert res["acc@5"]["text"] == pytest.approx(1.0)
