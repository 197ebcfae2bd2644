"""2-process DDP (gloo, CPU) through Lightning Fabric gives the same gradients as one process on the
same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmstack.model import ModelConfig, Transformer
from lmstack.train.losses import lm_loss

from .helpers import clean_env
from .helpers.ddp_data import global_batch, model_config

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp_grads.pt"
    env = clean_env()  # without an earlier in-process run's rendezvous variables
    subprocess.run(
        [sys.executable, str(HERE / "workers" / "ddp_grads_worker.py"), str(out)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    ddp = torch.load(out)

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_dict(model_config()))
    tokens = global_batch()
    ce, z = lm_loss(model(tokens[:, :-1]), tokens[:, 1:], 1e-4)
    (ce + z).backward()
    single = dict(model.named_parameters())
    assert set(ddp) == set(single)
    for name, grad in ddp.items():
        torch.testing.assert_close(grad, single[name].grad, atol=1e-6, rtol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in ddp.values())
