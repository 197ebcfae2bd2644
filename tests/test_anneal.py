"""stage=anneal on real runs: the checkpoint's weights and AdamW state carry on, the learning rate starts at the
checkpoint's value and falls linearly to zero over the anneal's budget on the new mix, and the run records
where it came from; checkpoints without optimizer state are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmstack.config import ConfigError
from lmstack.run import run

from .helpers import SMALL, compose_cfg
from .test_stability import scalars


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cache_dir) -> Path:
    """8 steps of `tiny` on the default corpus: the learning rate is past warmup and on its way down."""
    from .helpers import SMALL, compose_cfg

    out = tmp_path_factory.mktemp("pretrain")
    run(compose_cfg([*SMALL, "train.max_tokens=2048"], run_dir=out / "run", cache_dir=cache_dir))
    return out / "run" / "checkpoints" / "last.ckpt"


def test_an_anneal_keeps_the_optimizer_and_decays_from_the_checkpoints_lr(pretrained, small_cfg):
    saved = torch.load(pretrained, weights_only=True)
    lr0 = saved["optimizer_states"][0]["param_groups"][0]["lr"]
    steps_before = [s["step"] for s in saved["optimizer_states"][0]["state"].values()]
    cfg = small_cfg(
        "stage=anneal", f"init_from={pretrained}", "data_mix=prose", "train.max_tokens=1024", "data.vocab_size=512"
    )
    result = run(cfg)
    assert result["steps"] == 4 and result["anneal"]["init_from"] == str(pretrained)
    assert result["anneal"]["step"] == 8 and result["anneal"]["start_lr"] == pytest.approx(lr0)
    lrs = scalars(Path(cfg.run_dir))["train/lr"]
    assert lrs == pytest.approx([lr0 * (1 - k / 4) for k in range(4)], rel=1e-5)  # linear to 0 over 4 steps
    annealed = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    state = annealed["optimizer_states"][0]
    assert [s["step"] for s in state["state"].values()] == [s + 4 for s in steps_before]  # AdamW went on
    assert state["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert annealed["lmstack"]["anneal_from"]["init_from"] == str(pretrained)
    assert json.loads((Path(cfg.run_dir) / "result.json").read_text())["anneal"]["tokens"] == 2048
    assert annealed["lmstack"]["identity"]["data_mix"]["sources"][0]["name"] == "brown"  # the new mix


def test_an_anneal_needs_the_optimizer_state_of_its_checkpoint(pretrained, small_cfg, tmp_path):
    from lmstack.checkpoint import atomic_save, load_checkpoint, model_checkpoint

    model, _, _ = load_checkpoint(str(pretrained))
    weights_only = tmp_path / "weights.ckpt"
    atomic_save(model_checkpoint(model), weights_only)
    with pytest.raises(ConfigError, match="holds no optimizer state .* stage=anneal keeps the optimizer"):
        run(small_cfg("stage=anneal", f"init_from={weights_only}"))
    with pytest.raises(ConfigError, match="set init_from=PATH"):
        run(small_cfg("stage=anneal"))


def test_a_muon_anneal_carries_muons_momentum_and_both_learning_rates(cache_dir, small_cfg, tmp_path):
    """optimizer=muon: the hidden matrices' lr (muon.lr) and AdamW's start from their own values, and Muon's
    momentum goes on from the checkpoint's: one step from the checkpoint and from a copy whose momentum is
    doubled (the same weights, so the same gradient) differ by exactly 0.95 x the momentum; annealing with the
    other optimizer is refused, naming it."""
    from lmstack.checkpoint import atomic_save

    muon = ["optimizer=muon", "optimizer.lr=3e-3", "optimizer.muon.lr=0.02"]
    pre = compose_cfg([*SMALL, "train.max_tokens=2048", *muon], run_dir=tmp_path / "pre", cache_dir=cache_dir)
    run(pre)
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    lr0 = {g["group"]: g["lr"] for g in saved["optimizer_states"][0]["param_groups"]}
    assert lr0["muon"] == pytest.approx(lr0["decay"] * 0.02 / 3e-3)  # one schedule, two peaks
    with pytest.raises(ConfigError, match="was trained with optimizer=muon.* set optimizer=muon"):
        run(small_cfg("stage=anneal", f"init_from={ckpt}", "train.max_tokens=512"))
    muon_ids = [i for g in saved["optimizer_states"][0]["param_groups"] if g["group"] == "muon" for i in g["params"]]
    assert len(muon_ids) == 7 * 4  # tiny: 4 blocks of q, k, v, o, gate, up, down
    for i in muon_ids:
        saved["optimizer_states"][0]["state"][i]["momentum_buffer"] *= 2
    doubled = tmp_path / "doubled.ckpt"
    atomic_save(saved, doubled)
    after = {}
    for name, path in (("saved", ckpt), ("doubled", doubled)):
        cfg = compose_cfg([*SMALL, "stage=anneal", f"init_from={path}", "optimizer=muon", "train.max_tokens=256"],
                          run_dir=tmp_path / name, cache_dir=cache_dir)  # fmt: skip
        run(cfg)
        assert scalars(Path(cfg.run_dir))["train/lr"][0] == pytest.approx(lr0["muon"])  # Muon's group: the first
        after[name] = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    original = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"]
    for i in muon_ids:
        a, b = (after[n]["optimizer_states"][0]["state"][i]["momentum_buffer"] for n in ("saved", "doubled"))
        scale = float(b.abs().max())  # float32 rounding of the two buffers, relative to their size
        assert torch.allclose(b - a, 0.95 * original[i]["momentum_buffer"], rtol=0, atol=1e-5 * scale), i
