"""Run by test_ddp.py: one DDP training step on 2 CPU processes (gloo) through Lightning Fabric.

Each rank takes half of the global batch; rank 0 saves the averaged gradients to argv[1].
"""

import sys

import torch
from lightning.fabric import Fabric

from lmstack.model import ModelConfig, Transformer
from lmstack.train.losses import lm_loss

sys.path.insert(0, __file__.rsplit("/", 3)[0])
from tests.helpers.ddp_data import global_batch, model_config  # noqa: E402


def main(out: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", precision="32-true")
    fabric.launch()
    torch.manual_seed(0)
    model = fabric.setup_module(Transformer(ModelConfig.from_dict(model_config())))
    tokens = global_batch()
    half = tokens.shape[0] // 2
    mine = tokens[fabric.global_rank * half : (fabric.global_rank + 1) * half]
    ce, z = lm_loss(model(mine[:, :-1]), mine[:, 1:], 1e-4)
    fabric.backward(ce + z)
    if fabric.global_rank == 0:
        torch.save({n: p.grad.detach().clone() for n, p in model.module.named_parameters()}, out)
    fabric.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
