"""The training module's optimizer step against a plain PyTorch loop: forward, loss, backward, the gradient norm
clipped to train.grad_clip, AdamW's update. The two must give the same weights step after step."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from lmstack.adapt.data import Rows
from lmstack.config.schema import OptimizerSection, TrainSection
from lmstack.model import ModelConfig, Transformer
from lmstack.train.context import RunContext
from lmstack.train.losses import lm_loss
from lmstack.train.module import TrainModule
from lmstack.train.objective import NextToken
from lmstack.train.optim import adamw

SCHEDULE = {"name": "constant", "peak_lr": 1e-2, "total_tokens": 10_000, "warmup_tokens": 0, "min_lr": 0.0}


@pytest.mark.parametrize("clip", [0.05, None])
def test_the_step_equals_a_plain_pytorch_loop(tmp_path, clip):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32)
    opt = OptimizerSection(name="adamw", lr=1e-2)
    module = TrainModule(cfg.to_dict(), opt, SCHEDULE, TrainSection(grad_clip=clip), NextToken(), RunContext())
    ref = Transformer(cfg)
    ref.load_state_dict(copy.deepcopy(module.model.state_dict()))
    rows = {"input_ids": torch.randint(0, 64, (4, 16)), "labels": torch.randint(0, 64, (4, 16))}
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(Rows(rows), batch_size=4)  # the four rows in order, every step
    trainer.fit(module, train_dataloaders=loader)

    ref_opt = adamw(ref, opt)
    norms = []
    for _ in range(3):
        ce, z = lm_loss(ref(rows["input_ids"]), rows["labels"])
        (ce + z).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip or float("inf"))))
        ref_opt.step()
        ref_opt.zero_grad()
    if clip:
        assert min(norms) > 5 * clip  # the clip acts on every step
    for (name, a), b in zip(module.model.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-6), name
    assert module.skipped_steps == 0 and trainer.global_step == 3
