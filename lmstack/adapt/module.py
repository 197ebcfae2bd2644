"""The SFT LightningModule: pretraining's module (optimizer, schedule, clipping, step guard, checkpoints)
with the SFT loss on packed conversations; a step whose micro-batches hold no trainable token on any rank
is skipped, so it changes nothing."""

from __future__ import annotations

import torch

from lmstack.model import Documents
from lmstack.train.module import PretrainModule

from .sft import sft_loss


class SFTModule(PretrainModule):
    def __init__(
        self,
        *args,  # PretrainModule's (model_cfg, optimizer, schedule, ...): saved with these by save_hyperparameters
        reduction: str = "mean",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.reduction = reduction  # saved with the other arguments by save_hyperparameters

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"], docs=Documents(batch["doc"]))
        loss, n = sft_loss(logits, batch["labels"], self.reduction)
        self.micro.append({"batch": batch, "loss": loss.detach(), "trainable": n})
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/trainable_tokens", float(n))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def _decide(self, grad_norm: torch.Tensor) -> None:
        trainable = torch.tensor(float(sum(m.get("trainable", 0) for m in self.micro)), device=self.device)
        if self.trainer.world_size > 1:
            trainable = self.trainer.strategy.reduce(trainable, reduce_op="sum")
        super()._decide(grad_norm)
        if float(trainable) == 0 and not self.skip_update:  # nothing to learn from: no update at all
            self.skip_update = True
            self.skipped_steps += 1

    def on_validation_epoch_start(self):
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"], docs=Documents(batch["doc"]))
        loss, n = sft_loss(logits, batch["labels"], "mean")
        self._val_sums += torch.tensor([float(loss) * n, n], dtype=torch.float64, device=self.device)

    def on_validation_epoch_end(self):
        nats, n = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist()
        self.log("val/loss", nats / max(n, 1), prog_bar=True, sync_dist=True)  # equal on all ranks already
        self.last_val = {"step": self.trainer.global_step, "val/loss": nats / max(n, 1)}
