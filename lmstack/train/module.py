"""The pretraining LightningModule: owns the loss, the optimizer, the schedule and the logging.

Logged: train/loss (cross-entropy), train/z_loss, train/grad_norm, train/lr, train/tokens, val/loss and
val/bpb (bits per byte of the held-out text: summed nats / ln 2 / UTF-8 bytes of the target tokens).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from lmstack.model import ModelConfig, Transformer

from .losses import lm_loss, token_losses
from .optim import build_adamw
from .schedules import Schedule


class PretrainModule(L.LightningModule):
    def __init__(self, model_cfg: dict, optimizer: dict, schedule: dict, z_loss: float = 0.0,
                 grad_clip: float | None = None, tokens_per_step: int = 1, config: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig(**model_cfg)
        self.model = Transformer(self.model_cfg)
        self.z_loss, self.grad_clip, self.tokens_per_step = z_loss, grad_clip, tokens_per_step
        self.register_buffer("token_bytes", torch.ones(self.model_cfg.vocab_size, dtype=torch.long), persistent=False)
        self.tokenizer_json: str | None = None  # saved in checkpoints so they are self-contained
        self.last_val: dict | None = None  # the latest validation result, with its step

    def set_token_bytes(self, token_bytes: torch.Tensor) -> None:
        tb = torch.zeros(self.model_cfg.vocab_size, dtype=torch.long)
        tb[: len(token_bytes)] = token_bytes.long()
        self.token_bytes = tb.to(self.token_bytes.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"])
        ce, z = lm_loss(logits, batch["labels"], self.z_loss)
        self.log("train/loss", ce, prog_bar=True)
        self.log("train/z_loss", z)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/tokens", float((self.trainer.global_step + 1) * self.tokens_per_step))
        return ce + z

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip to the global norm and log the norm before clipping."""
        max_norm = self.grad_clip if self.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        self.log("train/grad_norm", norm)

    def configure_optimizers(self):
        o = self.hparams.optimizer
        opt = build_adamw(self.model, o["lr"], o["betas"], o["eps"], o["weight_decay"], o["no_decay"],
                          o["decay_norms"], o["decay_biases"], o.get("fused"))
        sched = Schedule(**self.hparams.schedule)
        peak, tps = sched.peak_lr, self.tokens_per_step
        lr_lambda = lambda step: sched.lr(step * tps) / peak if peak else 0.0  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- validation: bits per byte --------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # nats, tokens, bytes

    def validation_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"])
        labels = batch["labels"]
        losses = token_losses(logits, labels).double()
        nbytes = self.token_bytes[labels]
        counted = nbytes > 0  # special tokens (EOS) stand for no text
        self._val_sums += torch.stack(
            [(losses * counted).sum(), counted.sum().double(), nbytes.sum().double()]
        )

    def on_validation_epoch_end(self):
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        nats, tokens, nbytes = sums.tolist()
        self.log("val/loss", nats / max(tokens, 1), sync_dist=False)
        self.log("val/bpb", nats / math.log(2) / max(nbytes, 1), prog_bar=True, sync_dist=False)
        self.last_val = {"step": self.trainer.global_step, "val/bpb": nats / math.log(2) / max(nbytes, 1)}

    # ---- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        if self.tokenizer_json is not None:
            checkpoint["tokenizer_json"] = self.tokenizer_json
        checkpoint["token_bytes"] = self.token_bytes.cpu()

    def on_load_checkpoint(self, checkpoint):
        self.tokenizer_json = checkpoint.get("tokenizer_json")
        if "token_bytes" in checkpoint:
            self.token_bytes = checkpoint["token_bytes"].to(self.token_bytes.device)
