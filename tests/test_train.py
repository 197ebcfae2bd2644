"""Fits on the real default corpus (a slice of the Python standard library): outputs, resume, generation."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmstack.run import run

ROOT = Path(__file__).resolve().parents[1]


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def test_fit_writes_logs_checkpoint_and_config(small_cfg):
    cfg = small_cfg("train.max_tokens=1024")
    result = run(cfg)
    run_dir = Path(cfg.run_dir)
    assert result["steps"] == 4  # 1024 tokens / (4 x 64) per step
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "config.yaml").read_text().count("d_model: 128") == 1
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/z_loss", "train/grad_norm", "train/lr", "train/tokens", "val/loss", "val/bpb"} <= tags
    tokens = [e.value for e in acc.Scalars("train/tokens")]
    assert tokens[-1] == 1024
    assert 0 < result["val/bpb"] < result["val/bpb_before"] + 0.5


@pytest.mark.slow
def test_exact_resume_reproduces_the_losses(small_cfg, tmp_path):
    common = [
        "logger=csv",
        "train.max_tokens=1536",
        "train.ckpt_every_steps=3",
        "optimizer.lr=1e-2",
        "trainer.accumulate_grad_batches=2",
        "data.batch_size=2",
    ]
    full = small_cfg(*common)
    full.run_dir = str(tmp_path / "full")
    run(full)
    reference = losses(Path(full.run_dir))
    assert sorted(reference) == list(range(6))

    resumed = small_cfg(*common)
    resumed.run_dir = str(tmp_path / "resumed")
    resumed.ckpt_path = str(Path(full.run_dir) / "checkpoints" / "step000003.ckpt")
    run(resumed)
    after = losses(Path(resumed.run_dir))
    assert sorted(after) == [3, 4, 5]
    for step in after:
        assert after[step] == pytest.approx(reference[step], abs=1e-6), step
    assert len(set(reference.values())) == 6  # the losses do change from step to step


@pytest.mark.slow
def test_ckpt_path_last_finds_the_newest_run(small_cfg, tmp_path):
    first = small_cfg("train.max_tokens=512", f"paths.output_root={tmp_path}")
    first.run_dir = str(tmp_path / "a")
    run(first)
    second = small_cfg("train.max_tokens=1024", f"paths.output_root={tmp_path}", "ckpt_path=last")
    second.run_dir = str(tmp_path / "b")
    assert run(second)["steps"] == 4


@pytest.mark.slow
def test_generate_cli_from_checkpoint(small_cfg):
    cfg = small_cfg()
    run(cfg)
    ckpt = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmstack.cli",
            "generate",
            f"ckpt={ckpt}",
            "prompt='def main('",
            "max_new_tokens=12",
            "temperature=0",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out.startswith("def main(") and len(out) > len("def main(")
    bad = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "generate", "prompt=x"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode != 0 and "missing argument ckpt" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "generate", "ckpt=/nonexistent.ckpt", "prompt=x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert missing.returncode != 0 and "no checkpoint at '/nonexistent.ckpt'" in missing.stderr


def test_checkpoint_carries_tokenizer_and_model_config(small_cfg):
    from lmstack.checkpoint import load_checkpoint

    cfg = small_cfg()
    run(cfg)
    model, tok, ckpt = load_checkpoint(str(Path(cfg.run_dir) / "checkpoints" / "last.ckpt"))
    assert tok.get_vocab_size() == 512 and model.cfg.vocab_size == 512
    assert ckpt["hyper_parameters"]["config"]["model"]["d_model"] == 128
    idx = torch.tensor([tok.encode("import os").ids])
    assert model(idx).shape == (1, idx.shape[1], 512)
