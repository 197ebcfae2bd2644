"""The DPO objective: the policy is the stage's model (optimizer, schedule, clipping, checkpoints as in
pretraining); the reference is the starting model, frozen, either as log-probs computed once over the dataset
before training (`reference: cached`, carried by every pair) or as a frozen copy run at every step
(`reference: live`, given at construction; SimPO uses none). Logs train/ and val/ loss, rewards (chosen,
rejected, margin) and preference accuracy."""

from __future__ import annotations

import copy

import torch

from lmstack.train.objective import MicroStep, Objective

from .preference import preference_loss, response_logps


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` in eval mode with no parameter that trains: a reference policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class DPOObjective(Objective):
    name = "dpo"

    def __init__(
        self,
        loss: str = "dpo_norm",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        gamma: float = 0.5,
        reference: str = "cached",
        rpo_alpha: float = 0.0,
        reference_model: torch.nn.Module | None = None,  # reference=live: the frozen starting model
        dpop_lambda: float = 0.0,
    ):
        if reference not in ("cached", "live"):
            raise ValueError(f"dpo reference={reference!r}; allowed: cached, live")
        if reference == "live" and loss != "simpo" and reference_model is None:
            raise ValueError("dpo reference=live needs the frozen starting model (reference_model)")
        self.loss_name, self.beta, self.label_smoothing, self.gamma = loss, beta, label_smoothing, gamma
        self.reference, self.rpo_alpha, self.reference_model = reference, rpo_alpha, reference_model
        self.dpop_lambda = dpop_lambda
        if dpop_lambda and loss == "simpo":
            raise ValueError("dpo dpop_lambda needs a reference: not with loss=simpo")

    def options(self) -> dict:
        keys = ("beta", "label_smoothing", "gamma", "reference", "rpo_alpha", "dpop_lambda")
        return {"name": self.name, "loss": self.loss_name, **{k: getattr(self, k) for k in keys}}

    def logps(self, model, batch) -> tuple[torch.Tensor, ...]:
        """Summed response log-probs and token counts of the chosen and rejected sequences (one forward)."""
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        total, n = response_logps(model(ids), labels)
        b = batch["chosen_ids"].shape[0]
        return total[:b], total[b:], n[:b], n[b:]

    def reference_logps(self, batch, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_name == "simpo":
            z = torch.zeros(batch["chosen_ids"].shape[0], device=device)
            return z, z
        if self.reference == "cached":
            return batch["ref_chosen"].to(device).float(), batch["ref_rejected"].to(device).float()
        with torch.no_grad():
            self.reference_model.to(device)
            rc, rr, _, _ = self.logps(self.reference_model, batch)
        return rc, rr

    def step(self, module, batch, prefix: str):
        pc, pr, nc, nr = self.logps(module.model, batch)
        rc, rr = self.reference_logps(batch, module.device)
        opts = (self.loss_name, self.beta, self.label_smoothing, self.gamma, self.rpo_alpha, self.dpop_lambda)
        loss, metrics = preference_loss(pc, pr, rc, rr, nc, nr, *opts)
        module.log(f"{prefix}/loss", loss, prog_bar=prefix == "train", sync_dist=prefix == "val")
        for k, v in metrics.items():
            module.log(f"{prefix}/{k}", v, sync_dist=prefix == "val")
        return loss, metrics

    def training_step(self, module, batch) -> MicroStep:
        loss, _ = self.step(module, batch, "train")
        return MicroStep(loss, loss.detach())

    def validation_start(self, module) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=module.device)

    def validation_step(self, module, batch) -> None:
        loss, m = self.step(module, batch, "val")
        n = batch["chosen_ids"].shape[0]
        self.sums += torch.tensor(
            [float(loss) * n, float(m["rewards/accuracy"]) * n, n], dtype=torch.float64, device=module.device
        )

    def validation_end(self, module) -> dict:
        loss, acc, n = module.trainer.strategy.reduce(self.sums, reduce_op="sum").tolist()
        module.log("val/preference_accuracy", acc / max(n, 1), sync_dist=True)  # equal on all ranks already
        step = module.trainer.global_step
        return {"step": step, "val/loss": loss / max(n, 1), "val/preference_accuracy": acc / max(n, 1)}
