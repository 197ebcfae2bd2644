"""Systems applied to the model from outside, in one place, as torchtitan's `parallelize.py` does: activation
checkpointing, sharding (the strategy's `shard`, FSDP2: each block, then the root) and compile (each block,
as sharded). The model (`lmstack.model`) stays math; every step here is idempotent, because Lightning calls
`configure_model` again for each fit and validate."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.utils.checkpoint
from torch import nn


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Each block keeps only its input and recomputes its activations in backward (memory for ~1/3 more
    compute); only while training with gradients and without a KV cache."""
    for block in model.blocks:
        if getattr(block, "_lmstack_ac", False):
            continue
        plain = block.forward

        def forward(x, cos, sin, cache=None, pos=0, docs=None, plain=plain, block=block):
            if block.training and cache is None and torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(plain, x, cos, sin, None, 0, docs, use_reentrant=False)
            return plain(x, cos, sin, cache, pos, docs)

        block.forward = forward
        block._lmstack_ac = True


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each block in place (sharded blocks compile as they are)."""
    for block in model.blocks:
        if not getattr(block, "_lmstack_compiled", False):
            block.compile()
            block._lmstack_compiled = True


def parallelize(
    model: nn.Module,
    activation_checkpointing: bool = False,
    compile: bool = False,
    shard: Optional[Callable[[nn.Module], None]] = None,
) -> nn.Module:
    """The training systems for `model`, in order: activation checkpointing, sharding, compile."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if shard is not None:
        shard(model)
    if compile:
        compile_blocks(model)
    return model
