"""What a stage trains for: its loss on a micro-batch, its metrics and its validation sums. The training module
(`lmstack.train.module.TrainModule`) drives one objective; everything else of a step (the update, the skip
decision, the schedule, checkpoints) is the module's and the same for every stage.

`NextToken` is pretraining's (and mid-training's): cross-entropy with the z-loss and, for MoE models, the
router losses; validation in bits per byte of the held-out text (summed nats / ln 2 / UTF-8 bytes of the
target tokens). The adaptation stages' objectives are in `lmstack.adapt`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch

from .losses import IGNORE_INDEX, lm_loss, token_losses


@dataclass
class MicroStep:
    """One micro-batch's result: what backward runs on, and what the step record keeps of it."""

    loss: torch.Tensor  # backward runs on this
    reported: torch.Tensor  # the step record's loss, detached (pretraining: the cross-entropy alone)
    learned: float = 1.0  # what there was to learn from (SFT: trainable tokens; GRPO: groups with signal)
    token_losses: Optional[torch.Tensor] = None  # per-token losses [rows, T], for step plugins
    batch: Optional[dict] = None  # the batch as the step record shows it (None: the micro-batch itself)


class Objective(ABC):
    """The interface; subclasses say what a micro-batch's loss is and how validation is summed up."""

    name = "objective"

    def options(self) -> dict:
        """What the checkpoint's hyper_parameters record of the objective."""
        return {"name": self.name}

    @abstractmethod
    def training_step(self, module, batch) -> MicroStep:
        """One micro-batch's forward and loss (its metrics logged through `module.log`)."""

    def validation_start(self, module) -> None:
        """Called at the start of every validation run (reset the sums)."""

    def validation_step(self, module, batch) -> None:
        """Add one held-out batch to the sums."""

    def validation_end(self, module) -> dict:
        """Reduce the sums over ranks, log them; returns the result with its step (the module's `last_val`)."""
        return {"step": module.trainer.global_step}


class NextToken(Objective):
    """Pretraining: next-token cross-entropy (+ z-loss, + MoE router losses); bits per byte on validation."""

    name = "pretrain"

    def __init__(self, z_loss: float = 0.0):
        self.z_loss = z_loss

    def options(self) -> dict:
        return {"name": self.name, "z_loss": self.z_loss}

    def training_step(self, module, batch) -> MicroStep:
        logits = module.model(batch["input_ids"])
        ce, z, per_token = lm_loss(logits, batch["labels"], self.z_loss, per_token=True)
        drop = module.sequences_to_drop(batch, per_token)
        if drop is not None:  # a step plugin took these sequences out of the loss (e.g. loss anomalies)
            ce, z = lm_loss(logits, batch["labels"].masked_fill(drop[:, None], IGNORE_INDEX), self.z_loss)
        if "filtered" in batch and int(batch["filtered"].sum()):
            module.list_filtered(batch)
        module.log("train/loss", ce, prog_bar=True)
        module.log("train/z_loss", z)
        loss = ce + z
        aux = module.model.moe_aux_loss()
        if aux is not None:
            lb, router_z = aux
            module.log("train/moe_lb_loss", lb)
            module.log("train/moe_router_z_loss", router_z)
            moe = module.model_cfg.moe
            loss = loss + moe.lb_coef * lb + moe.z_coef * router_z
        return MicroStep(loss, ce.detach(), token_losses=per_token)

    def validation_start(self, module) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=module.device)  # nats, tokens, bytes

    def validation_step(self, module, batch) -> None:
        logits = module.model(batch["input_ids"])
        labels = batch["labels"]
        losses = token_losses(logits, labels).double()
        nbytes = module.token_bytes[labels]
        counted = nbytes > 0  # special tokens (EOS) stand for no text
        self.sums += torch.stack([(losses * counted).sum(), counted.sum().double(), nbytes.sum().double()])

    def validation_end(self, module) -> dict:
        nats, tokens, nbytes = module.trainer.strategy.reduce(self.sums, reduce_op="sum").tolist()
        bpb = nats / math.log(2) / max(nbytes, 1)
        # reduced over ranks above, so equal on all; sync_dist (a mean of equal values) keeps Lightning's epoch
        # aggregation in step with that, without its warning about unsynced epoch metrics
        module.log("val/loss", nats / max(tokens, 1), sync_dist=True)
        module.log("val/bpb", bpb, prog_bar=True, sync_dist=True)
        return {"step": module.trainer.global_step, "val/bpb": bpb}
