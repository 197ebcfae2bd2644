"""The DPO LightningModule: the policy is pretraining's model (optimizer, schedule, clipping, checkpoints as
in pretraining); the reference is the starting model, frozen, either as log-probs computed once over the
dataset before training (`reference: cached`) or as a copy run live at every step (`reference: live`; SimPO
uses none). Logs train/ and val/ loss, rewards (chosen, rejected, margin) and preference accuracy."""

from __future__ import annotations

import copy

import torch

from lmstack.train.module import PretrainModule

from .preference import preference_loss, response_logps


class DPOModule(PretrainModule):
    def __init__(
        self,
        *args,  # PretrainModule's (model_cfg, optimizer, schedule, ...): saved with these by save_hyperparameters
        loss: str = "dpo_norm",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        gamma: float = 0.5,
        reference: str = "cached",
        rpo_alpha: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if reference not in ("cached", "live"):
            raise ValueError(f"dpo reference={reference!r}; allowed: cached, live")
        self.loss_name, self.beta, self.label_smoothing, self.gamma = loss, beta, label_smoothing, gamma
        self.reference, self.rpo_alpha = reference, rpo_alpha
        self._ref: list = []  # the live reference, outside the module's parameters (never optimised)

    def freeze_reference(self) -> None:
        """Keep a frozen copy of the current weights as the live reference."""
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        self._ref = [ref]

    def logps(self, model, batch) -> tuple[torch.Tensor, ...]:
        """Summed response log-probs and token counts of the chosen and rejected sequences (one forward)."""
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        total, n = response_logps(model(ids), labels)
        b = batch["chosen_ids"].shape[0]
        return total[:b], total[b:], n[:b], n[b:]

    def reference_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_name == "simpo":
            z = torch.zeros(batch["chosen_ids"].shape[0], device=self.device)
            return z, z
        if self.reference == "cached":
            return batch["ref_chosen"].to(self.device).float(), batch["ref_rejected"].to(self.device).float()
        if not self._ref:
            raise RuntimeError("reference=live needs freeze_reference() before training")
        with torch.no_grad():
            self._ref[0].to(self.device)
            rc, rr, _, _ = self.logps(self._ref[0], batch)
        return rc, rr

    def step(self, batch, prefix: str):
        pc, pr, nc, nr = self.logps(self.model, batch)
        rc, rr = self.reference_logps(batch)
        loss, metrics = preference_loss(
            pc, pr, rc, rr, nc, nr, self.loss_name, self.beta, self.label_smoothing, self.gamma, self.rpo_alpha
        )
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "train", sync_dist=prefix == "val")
        for k, v in metrics.items():
            self.log(f"{prefix}/{k}", v, sync_dist=prefix == "val")
        return loss, metrics

    def training_step(self, batch, batch_idx):
        loss, _ = self.step(batch, "train")
        self.micro.append({"batch": batch, "loss": loss.detach()})
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def on_validation_epoch_start(self):
        self._val_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        loss, m = self.step(batch, "val")
        n = batch["chosen_ids"].shape[0]
        self._val_sums += torch.tensor(
            [float(loss) * n, float(m["rewards/accuracy"]) * n, n], dtype=torch.float64, device=self.device
        )

    def on_validation_epoch_end(self):
        loss, acc, n = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist()
        self.last_val = {
            "step": self.trainer.global_step,
            "val/loss": loss / max(n, 1),
            "val/preference_accuracy": acc / max(n, 1),
        }
        self.log("val/preference_accuracy", acc / max(n, 1), sync_dist=True)  # equal on all ranks already
