"""The run config: one section per stage, `mmrank config show / init`, `--config` on every stage
with flags over the file, R/config.yaml recording what ran, and file values changing what a stage does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.numpy import load_file
from typer.testing import CliRunner

from mmrank.cli import app
from mmrank.errors import ConfigError
from mmrank.run_config import SECTIONS, RunConfig, load_run_config, render_run_config, stage_config
from mmrank.testing.presets import TINY_CONFIG, preset_args, public_fixtures

torch.set_num_threads(1)
runner = CliRunner()


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_show_prints_every_setting_of_every_stage() -> None:
    out = _ok(["config", "show"])
    printed = yaml.safe_load(out)
    cfg = RunConfig()
    expected = cfg.model_dump(mode="json")
    # a deterministic policy's three settings are left out of the market's dumps (its manifest keeps
    # its bytes); `config show` prints them all the same
    beh = cfg.market.behaviour
    expected["market"]["behaviour"].update({k: getattr(beh, k) for k in type(beh).model_fields
                                            if k.startswith("policy_")})
    assert printed == expected  # every section, every setting, with its value
    assert list(printed) == ["market", "data", "pretrain", "embed", "ctr", "rerank", "hardware"]
    leaves = _leaves(expected)
    for key in ("ctr.model.make.knowledge", "ctr.model.make.after_pretrain", "ctr.train.batch_size",
                "ctr.model.n_tiers", "pretrain.queue_size", "embed.exact_below", "market.n_items",
                "data.negatives_per_positive"):
        assert key in leaves
    assert "# SimTier's N" in out  # each field's description is printed beside it


def test_init_writes_a_commented_default_that_loads_back(tmp_path: Path) -> None:
    p = tmp_path / "mmrank.yaml"
    _ok(["config", "init", "--out", p])
    text = p.read_text()
    assert text.count("\n# ") > 5 and load_run_config(p) == RunConfig()
    res = runner.invoke(app, ["config", "init", "--out", str(p)])
    assert res.exit_code != 0 and "exists" in str(res.exception)


def test_file_then_flags_and_errors_name_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("ctr:\n  seeds: 5\n  model:\n    make: {knowledge: full}\npretrain: {epochs: 3}\n")
    s = stage_config("ctr", p, {"seeds": 2, "model": {"emb_dim": 8}})
    assert (s.seeds, s.model.emb_dim, s.model.make.knowledge) == (2, 8, "full")
    assert stage_config("ctr", p).seeds == 5 and stage_config("pretrain", p).epochs == 3
    flat = tmp_path / "flat.yaml"  # a file without sections is that one section
    flat.write_text("epochs: 4\nvariant: scl-no-triplet\n")
    assert stage_config("pretrain", flat).variant == "scl-no-triplet"
    bad = tmp_path / "bad.yaml"
    bad.write_text("ctr:\n  model:\n    make: {proj_dimm: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: section 'ctr': unknown key 'model.make.proj_dimm'"):
        stage_config("ctr", bad)
    bad.write_text("ctr: {seeds: many}\n")
    with pytest.raises(ConfigError, match=r"key 'seeds'.*'many'"):
        stage_config("ctr", bad)
    bad.write_text("ctr: {seeds: 2}\nranker: {x: 1}\n")
    with pytest.raises(ConfigError, match="unknown key 'ranker'"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="unknown config section 'ranker'"):
        stage_config("ranker", p)
    assert SECTIONS == ("market", "data", "pretrain", "embed", "ctr", "rerank", "hardware")


def test_market_generate_takes_the_market_section(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("market: {n_items: 40, n_users: 20, n_impressions: 400, n_days: 3, image_size: 16}\n")
    _ok(["market", "generate", "--run", tmp_path / "a", "--config", p, "--users", 25])
    man = json.loads((tmp_path / "a" / "data" / "manifest.json").read_text())
    assert man["counts"]["items"] == 40 and man["counts"]["users"] == 25  # file, then the flag
    recorded = load_run_config(run=tmp_path / "a")
    assert (recorded.market.n_items, recorded.market.n_users) == (40, 25)
    out = _ok(["report", "--run", tmp_path / "a"])  # the report labels a market run as simulated
    assert out.startswith("Simulated: ") and "Simulated" in (tmp_path / "a" / "report" / "results.md").read_text()
    res = runner.invoke(app, ["market", "generate", "--out", str(tmp_path / "b")])  # --run, like every stage
    assert res.exit_code == 2 and "No such option: --out" in res.output


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The H&M fixture imported, pre-trained and embedded with tiny encoders."""
    from mmrank.data.importer import import_data

    d = tmp_path_factory.mktemp("cfg")
    fx = public_fixtures(d / "fx")
    run = d / "run"
    import_data(run, preset="hm", **preset_args(fx)["hm"])
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    _ok(["pretrain", "--run", run, "--config", cfg])
    _ok(["embed", "--run", run, "--config", cfg])
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_ctr_and_make_settings_in_the_file_change_the_model(embedded_run: Path, tmp_path: Path) -> None:
    run = _copy(embedded_run, tmp_path)
    p = tmp_path / "ctr.yaml"
    p.write_text("ctr:\n  strategy: make\n  make_epochs: 1\n  train: {batch_size: 32}\n"
                 "  model:\n    emb_dim: 6\n    mlp_hidden: [12]\n"
                 "    make: {proj_dim: 5, mlp_hidden: [10, 7, 3], knowledge: full}\n")
    _ok(["ctr", "train", "--run", run, "--config", p])
    w = load_file(str(run / "ctr" / "make" / "model.safetensors"))
    assert w["ids.item_emb.weight"].shape[1] == 6 and w["head.towers.click.layers.0.weight"].shape[0] == 12
    assert w["knowledge.module.proj.weight"].shape[0] == 5
    assert [w[f"knowledge.module.mlp.layers.{i}.weight"].shape[0] for i in range(3)] == [10, 7, 3]
    conf = json.loads((run / "ctr" / "make" / "config.json").read_text())
    assert conf["train"]["batch_size"] == 32 and conf["make_epochs"] == 1
    # 'full' knowledge (every hidden output of MLP_MAKE + v_MAKE + logit) widens the ID model's input
    knowledge_full = w["knowledge.norm.weight"].shape[0]
    p2 = tmp_path / "ctr2.yaml"
    p2.write_text(p.read_text().replace("knowledge: full", "knowledge: compact"))
    _ok(["ctr", "train", "--run", run, "--config", p2, "--make-epochs", "0"])  # the flag wins
    w2 = load_file(str(run / "ctr" / "make" / "model.safetensors"))
    assert w2["knowledge.norm.weight"].shape[0] < knowledge_full
    conf2 = json.loads((run / "ctr" / "make" / "config.json").read_text())
    assert conf2["make_epochs"] == 0 and conf2["model"]["make"]["knowledge"] == "compact"
    shown = yaml.safe_load(_ok(["config", "show", "--run", run]))
    assert shown["ctr"]["make_epochs"] == 0 and shown["ctr"]["model"]["make"]["proj_dim"] == 5
    assert shown["ctr"]["model"]["emb_dim"] == 6 and shown["pretrain"]["text_encoder"] == "hash-bow"


def test_ctr_strategies_and_seeds_from_the_file(embedded_run: Path, tmp_path: Path) -> None:
    run = _copy(embedded_run, tmp_path)
    p = tmp_path / "c.yaml"
    p.write_text(TINY_CONFIG.replace("strategies: [id, simtier, make]", "strategies: [id, vector]")
                 .replace("emb_dim: 4", "emb_dim: 3"))
    _ok(["ctr", "compare", "--run", run, "--config", p])
    comp = json.loads((run / "ctr" / "compare.json").read_text())
    assert {"id", "vector"} <= set(comp) and "make" not in comp and comp["seeds"] == 1
    assert load_file(str(run / "ctr" / "vector" / "model.safetensors"))["ids.item_emb.weight"].shape[1] == 3


def test_embed_settings_in_the_file(embedded_run: Path, tmp_path: Path) -> None:
    run = _copy(embedded_run, tmp_path)
    shutil.rmtree(run / "embeddings")
    p = tmp_path / "e.yaml"
    p.write_text("embed: {exact_below: 0, batch_size: 5, threads: 1}\n")
    out = _ok(["embed", "--run", run, "--config", p])
    assert "index hnsw" in out  # exact_below 0: an HNSW index even for 16 items
    assert load_run_config(run=run).embed.batch_size == 5
    out = _ok(["embed", "--run", run, "--config", p, "--exact-below", "1000"])
    assert "index flat" in out


def test_render_is_valid_yaml_for_a_changed_config() -> None:
    cfg = RunConfig().model_copy(deep=True)
    cfg.ctr.model.make.knowledge = "full"
    assert yaml.safe_load(render_run_config(cfg))["ctr"]["model"]["make"]["knowledge"] == "full"


def test_every_stage_command_is_registered_and_takes_run_and_config() -> None:
    import typer.main

    group = typer.main.get_command(app)
    names = set(group.commands)
    assert {"market", "data", "config", "pretrain", "embed", "ctr", "search", "serve", "report", "demo"} <= names
    stages = {"market generate": group.commands["market"].commands["generate"],
              "data import": group.commands["data"].commands["import"],
              "data build": group.commands["data"].commands["build"],
              "pretrain": group.commands["pretrain"], "pretrain compare": group.commands["pretrain"].commands["compare"],
              "embed": group.commands["embed"],
              "ctr train": group.commands["ctr"].commands["train"],
              "ctr compare": group.commands["ctr"].commands["compare"],
              "ctr predict": group.commands["ctr"].commands["predict"]}
    for name, cmd in stages.items():
        opts = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts}
        assert {"--run", "--config"} <= opts, name
