"""Training-side hardening: bad numbers fail before any work, a resume checks what it resumes, `last`
finds a readable checkpoint of the right run, and checkpoint writes are atomic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmstack.config.schema import ConfigError, validate

from .helpers import CONF, compose_cfg

ROOT = Path(CONF).parent


@pytest.mark.parametrize(
    "override,key",
    [
        ("optimizer.lr=nan", "optimizer.lr"),
        ("optimizer.lr=inf", "optimizer.lr"),
        ("train.grad_clip=inf", "train.grad_clip"),
        ("loss.z_loss=nan", "loss.z_loss"),
        ("model.init_std=inf", "model.init_std"),
        ("schedule.min_lr=nan", "schedule.min_lr"),
        ("optimizer.betas=[0.9,1.0]", "optimizer.betas"),
        ("optimizer.betas=[-0.1,0.95]", "optimizer.betas"),
        ("optimizer.betas=[0.9]", "optimizer.betas"),
        ("seed=-1", "seed"),
        ("callbacks.spike.threshold=nan", "callbacks.spike.threshold"),
    ],
)
def test_nan_inf_bad_betas_and_negative_seeds_are_refused(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        validate(OmegaConf.to_container(compose_cfg([override]), resolve=True))


@pytest.mark.slow
def test_a_nan_learning_rate_fails_before_any_data_work(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "optimizer.lr=nan",
            f"paths.output_root={tmp_path}",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode != 0 and "optimizer.lr=nan is not a finite number" in out.stderr
    assert not (tmp_path / "cache").exists()  # refused before the corpus cache was even created
    out = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "generate", "ckpt=x", "prompt=a", "seed=-3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode != 0 and "seed=-3" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (and last.ckpt)."""
    from lmstack.run import run

    from .helpers import SMALL

    tmp = tmp_path_factory.mktemp("resume")
    cfg = compose_cfg(
        [*SMALL, "train.max_tokens=1024", "train.ckpt_every_steps=2", "logger=csv"],
        run_dir=tmp / "outputs" / "runs" / "a",
        cache_dir=tmp / "cache",
    )
    run(cfg)
    return tmp, cfg


def resume_cfg(four_steps, name, *overrides):
    from .helpers import SMALL

    tmp, base = four_steps
    cfg = compose_cfg(
        [*SMALL, "train.max_tokens=1024", "train.ckpt_every_steps=2", "logger=csv", *overrides],
        run_dir=tmp / "outputs" / "runs" / name,
        cache_dir=tmp / "cache",
    )
    cfg.ckpt_path = str(Path(base.run_dir) / "checkpoints" / "step000002.ckpt")
    return cfg


@pytest.mark.slow
def test_resume_with_another_batch_size_is_refused_then_allowed_with_the_right_tokens(four_steps):
    from lmstack.run import run

    with pytest.raises(ConfigError, match="global_batch_tokens: 256 -> 128"):
        run(resume_cfg(four_steps, "refused", "data.batch_size=2"))
    for override, key in (("seed=7", "seed"), ("optimizer.lr=1e-2", "optimizer")):
        with pytest.raises(ConfigError, match=key):
            run(resume_cfg(four_steps, f"refused-{key}", override))
    cfg = resume_cfg(four_steps, "allowed", "data.batch_size=2", "train.resume_changes=allow")
    result = run(cfg)
    # 512 tokens in the checkpoint, then (1024 - 512) / 128 = 4 steps of 128 tokens
    assert result["steps"] == 6
    saved = json.loads((Path(cfg.run_dir) / "result.json").read_text())
    assert saved["tokens"] == 1024
    ckpt = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lmstack"]["tokens"] == 1024 and ckpt["lmstack"]["identity"]["global_batch_tokens"] == 128


def test_ckpt_path_last_takes_the_newest_runs_newest_readable_checkpoint(four_steps, tmp_path, caplog):
    from lmstack.stages.resume import resolve_ckpt

    src = Path(four_steps[1].run_dir)
    root = tmp_path / "outputs"
    older, newer = root / "runs" / "older", root / "runs" / "newer"
    for d in (older, newer):
        shutil.copytree(src, d)
    os.utime(older / "config.yaml", (time.time() - 100, time.time() - 100))  # the newer run started later
    data = (newer / "checkpoints" / "last.ckpt").read_bytes()
    (newer / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated
    time.sleep(0.01)
    os.utime(older / "checkpoints" / "last.ckpt", None)  # the newest file by time is the older run's
    here = str(root / "runs" / "this")
    with caplog.at_level("WARNING"):
        got = resolve_ckpt("last", str(root), here)
    assert got == str(newer / "checkpoints" / "step000004.ckpt")
    assert "step000004.ckpt" in caplog.text and "last.ckpt does not read completely" in caplog.text
    (newer / "checkpoints" / "step000004.ckpt").write_bytes(b"")
    assert resolve_ckpt("last", str(root), here) == str(newer / "checkpoints" / "step000002.ckpt")
    assert resolve_ckpt(str(older), str(root), here) == str(older / "checkpoints" / "last.ckpt")


def test_checkpoint_writes_are_atomic(tmp_path):
    from lmstack.checkpoint import checkpoint_io, read_checkpoint

    io = checkpoint_io()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3), "x": Unpicklable()}, path)
    assert read_checkpoint(path)["step"] == 1 and os.listdir(path.parent) == ["last.ckpt"]
    replaced = []
    real = os.replace
    os.replace = lambda a, b: (replaced.append((Path(a).parent, Path(b))), real(a, b))[1]
    try:
        io.save_checkpoint({"step": 3}, path)
    finally:
        os.replace = real
    assert replaced == [(path.parent, path)] and io.load_checkpoint(path)["step"] == 3


def test_a_checkpoint_from_before_the_record_still_resumes(four_steps, tmp_path, caplog):
    from lmstack.checkpoint import RECORD, atomic_save, extras, read_record
    from lmstack.run import run

    saved = torch.load(Path(four_steps[1].run_dir) / "checkpoints" / "step000002.ckpt", weights_only=True)
    keys = extras(saved)
    assert keys["tokenizer_json"] and keys["token_bytes"].dtype == torch.long
    assert keys["record"]["tokens"] == 512 and keys["step_guard"] == {"skipped_steps": 0, "nonfinite_steps": 0}
    del saved[RECORD]
    old = tmp_path / "old.ckpt"
    atomic_save(saved, old)
    assert read_record(old) == {} and extras(saved)["record"] == {}
    cfg = resume_cfg(four_steps, "from-old")
    cfg.ckpt_path = str(old)
    with caplog.at_level("WARNING"):
        assert run(cfg)["steps"] == 4
    assert "records no run identity" in caplog.text


def test_a_checkpoint_with_the_flat_model_config_of_earlier_versions_loads(tmp_path):
    """Checkpoints written before the nested model config (flat keys: norm, norm_eps, n_kv_heads, moe_*,
    attn_backend) load through `ModelConfig.from_dict` into the same model."""
    import torch

    from lmstack.checkpoint import load_checkpoint
    from lmstack.model import ModelConfig, Transformer

    flat = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32, mlp_hidden=None,
                mlp_multiple_of=32, rope_theta=10000.0, norm="rmsnorm", norm_eps=1e-6, norm_bias=False,
                placement="reordered", qk_norm=True, tie_embeddings=False, attn_backend="eager", init_std=0.02,
                embed_init_std=0.02, init_cutoff=3.0, depth_scaled_init=False, moe_experts=0, moe_top_k=2,
                moe_hidden=None, moe_shared_expert=False, moe_norm_topk=False, moe_layers=None, moe_impl="auto",
                moe_lb_coef=0.01, moe_z_coef=0.001)  # fmt: skip
    cfg = ModelConfig.from_dict(flat)
    assert (cfg.n_kv_heads, cfg.attention.type, cfg.attention.backend) == (2, "gqa", "eager")
    assert (cfg.norm.eps, cfg.norm.placement, cfg.norm.qk_norm) == (1e-6, "reordered", True)
    model = Transformer(cfg)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_cfg": flat}, "global_step": 3}, path)  # fmt: skip
    again, _, ckpt = load_checkpoint(str(path))
    assert again.cfg == cfg and ckpt["global_step"] == 3
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(again(idx), model.eval()(idx))
