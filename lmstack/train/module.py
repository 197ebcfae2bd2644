"""The pretraining LightningModule: owns the loss, the optimizer, the schedule and the logging.

Logged: train/loss (cross-entropy), train/z_loss, train/grad_norm, train/lr, train/tokens,
train/skipped_steps, train/nonfinite_steps, val/loss and val/bpb (bits per byte of the held-out text:
summed nats / ln 2 / UTF-8 bytes of the target tokens).

After backward, the step's loss and gradient norm (reduced over ranks) decide whether the update is
taken (see `step_guard`): a non-finite value skips it, and step plugins (`lmstack.train.hooks.StepHooks`,
e.g. spike detection) can skip it too, from the step's record. Activation checkpointing, sharding and
compile are applied to the model from outside (`lmstack.train.parallelize`).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from lmstack.checkpoint import add_extras, extras
from lmstack.model import ModelConfig, Transformer
from lmstack.registry import lookup

from .elastic import rescale_loop_progress
from .hooks import RewindRequested, StepRecord, step_plugins
from .losses import IGNORE_INDEX, lm_loss, token_losses
from .parallelize import parallelize
from .schedules import Schedule
from .step_guard import NonFinite, make_skippable


def module_args(spec, model_cfg: dict, tokens_per_step: int, total_tokens: int, config, z_loss: float) -> tuple:
    """PretrainModule's positional arguments from a validated RunSpec: one place for pretraining and for
    every adaptation stage (whose modules take these first, then their own)."""
    from dataclasses import asdict

    from .schedules import schedule_args

    return (
        model_cfg,
        asdict(spec.optimizer),
        schedule_args(spec.schedule, spec.optimizer.lr, total_tokens),
        z_loss,
        spec.train.grad_clip,
        tokens_per_step,
        config,
        spec.train.max_nonfinite_steps,
        spec.train.activation_checkpointing,
        spec.train.compile,
    )


class PretrainModule(L.LightningModule):
    def __init__(
        self,
        model_cfg: dict,
        optimizer: dict,
        schedule: dict,
        z_loss: float = 0.0,
        grad_clip: float | None = None,
        tokens_per_step: int = 1,
        config: dict | None = None,
        max_nonfinite_steps: int = 5,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.from_dict(model_cfg)
        self.model = Transformer(self.model_cfg)
        self.activation_checkpointing, self.compile = activation_checkpointing, compile
        self.z_loss, self.grad_clip, self.tokens_per_step = z_loss, grad_clip, tokens_per_step
        self.register_buffer("token_bytes", torch.ones(self.model_cfg.vocab_size, dtype=torch.long), persistent=False)
        self.tokenizer_json: str | None = None  # saved in checkpoints so they are self-contained
        self.last_val: dict | None = None  # the latest validation result, with its step
        self.micro: list[dict] = []  # this step's micro-batches with their per-token losses (the step record)
        self.document_files: list = []  # per data source: its documents.jsonl, for the step record
        self.rewind_requested: RewindRequested | None = None  # set by a step plugin (hooks.request_rewind)
        self.skip_update, self.skipped_steps = False, 0
        self.nonfinite = NonFinite(max_nonfinite_steps)
        self.stop_reason: str | None = None  # set when the run stopped itself (non-finite losses)
        self._must_stop = False
        # what an exact resume needs unchanged (set by the run; saved in checkpoints, checked on resume)
        self.run_identity: dict | None = None
        self.token_base = (0, 0)  # (step, tokens trained before it): from the checkpoint a run resumed
        self.filtered_instances = 0  # training blocks the instance filter took out of the loss, on all ranks
        self.optimizer_state: dict | None = None  # stage=anneal: the checkpoint's AdamW state, loaded at fit start
        self.origin: dict | None = None  # stage=anneal: the checkpoint it started from (kept in its checkpoints)
        self._doc_index = None  # lmstack.data.documents.DocumentIndex, for listing filtered blocks

    def tokens_at(self, step: int) -> int:
        """Tokens trained after `step` optimizer steps (counted from the checkpoint when resumed, so a
        resume with another batch size, allowed by train.resume_changes, still counts right)."""
        base_step, base_tokens = self.token_base
        return base_tokens + (step - base_step) * self.tokens_per_step

    def set_token_bytes(self, token_bytes: torch.Tensor) -> None:
        tb = torch.zeros(self.model_cfg.vocab_size, dtype=torch.long)
        tb[: len(token_bytes)] = token_bytes.long()
        self.token_bytes = tb.to(self.token_bytes.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"])
        ce, z, per_token = lm_loss(logits, batch["labels"], self.z_loss, per_token=True)
        drop = self._sequences_to_drop(batch, per_token)
        if drop is not None:  # a step plugin took these sequences out of the loss (e.g. loss anomalies)
            ce, z = lm_loss(logits, batch["labels"].masked_fill(drop[:, None], IGNORE_INDEX), self.z_loss)
        self.micro.append({"batch": batch, "token_losses": per_token, "loss": ce.detach()})
        if "filtered" in batch and int(batch["filtered"].sum()):
            self._list_filtered(batch)
        self.log("train/loss", ce, prog_bar=True)
        self.log("train/z_loss", z)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/tokens", float(self.tokens_at(self.trainer.global_step + 1)))
        aux = self.model.moe_aux_loss()
        if aux is None:
            return ce + z
        lb, router_z = aux
        self.log("train/moe_lb_loss", lb)
        self.log("train/moe_router_z_loss", router_z)
        return ce + z + self.model_cfg.moe.lb_coef * lb + self.model_cfg.moe.z_coef * router_z

    def _sequences_to_drop(self, batch, per_token: torch.Tensor) -> torch.Tensor | None:
        """The rows some step plugin asked to leave out of this micro-batch's loss (None: none)."""
        drop = None
        for plugin in step_plugins(self.trainer):
            rows = plugin.on_token_losses(self.trainer, self, batch, per_token)
            if rows is not None:
                drop = rows if drop is None else drop | rows
        return drop if drop is not None and bool(drop.any()) else None

    def on_fit_start(self):
        if self.optimizer_state is not None:  # stage=anneal: AdamW's moments and step counts carry on
            self.trainer.optimizers[0].load_state_dict(self.optimizer_state)
            self.optimizer_state = None

    def configure_model(self):
        """Sharding strategies (FSDP2) shard the model here, on every rank, before optimizers exist."""
        trainer = self._trainer
        shard = getattr(trainer.strategy, "shard", None) if trainer is not None else None
        parallelize(self.model, self.activation_checkpointing, self.compile, shard)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip to the global norm and log the norm before clipping (over all shards under FSDP)."""
        max_norm = self.grad_clip if self.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # a DTensor: the norm reduced over the shards
            norm = norm.full_tensor()
        self.log("train/grad_norm", norm)
        self._decide(norm)

    def _decide(self, grad_norm: torch.Tensor) -> None:
        """Whether this step's update is taken: the same decision on every rank."""
        loss = torch.stack([m["loss"] for m in self.micro]).mean() if self.micro else torch.zeros(())
        filter_on = bool(self.micro) and "filtered" in self.micro[0]["batch"]  # the instance filter
        filtered = sum(float(m["batch"]["filtered"].sum()) for m in self.micro) if filter_on else 0.0
        stats = torch.stack([loss.float(), grad_norm.detach().float().to(loss.device), loss.new_tensor(filtered)])
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="mean")
        loss_v, norm_v, filtered_v = stats.tolist()
        if filter_on:
            self.filtered_instances += round(filtered_v * self.trainer.world_size)
            self.log("data/filtered_instances", float(self.filtered_instances))
        finite = math.isfinite(loss_v) and math.isfinite(norm_v)
        skip = not finite
        plugins = step_plugins(self.trainer)
        if plugins:
            record = StepRecord(
                self.trainer.global_step,
                loss_v,
                norm_v,
                finite,
                self.micro,
                self.tokenizer_json,
                [str(f) for f in self.document_files],
            )
            for plugin in plugins:
                skip = bool(plugin.on_step_stats(self.trainer, self, record)) or skip
        self.micro = []
        self.skip_update = skip
        self.skipped_steps += int(skip)
        self._must_stop = self.nonfinite.update(finite) or self._must_stop
        self.log("train/skipped_steps", float(self.skipped_steps))
        self.log("train/nonfinite_steps", float(self.nonfinite.total))

    def _list_filtered(self, batch) -> None:
        """This rank's filtered blocks, with their documents, in RUN_DIR/filtered_instances.jsonl."""
        import json
        from pathlib import Path

        from lmstack.data.documents import DocumentIndex

        from .forensics import tokenizer_from_json

        if self._doc_index is None:
            self._doc_index = DocumentIndex(self.document_files)
        tok = tokenizer_from_json(self.tokenizer_json) if self.tokenizer_json else None
        sources = torch.as_tensor(batch["source"]).tolist()
        lines = []
        for row in torch.nonzero(batch["filtered"]).flatten().tolist():
            period, start, times = batch["repetition"][row].tolist()
            ids = batch["input_ids"][row].tolist()
            docs = [self._doc_index.describe(sources[row], o) for o in batch["doc"][row].unique().tolist()]
            record = {"step": self.trainer.global_step, "rank": self.trainer.global_rank, "documents": docs}
            record.update(period=period, times=times, preview=tok.decode(ids[start : start + 64]) if tok else "")
            lines.append(json.dumps(record) + "\n")
        run_dir = Path(self.trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "filtered_instances.jsonl", "a") as f:  # one append per rank and micro-batch
            f.write("".join(lines))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if not self._must_stop or self.stop_reason:
            return
        path = (
            Path(self.trainer.default_root_dir) / "checkpoints" / f"nonfinite-step{self.trainer.global_step:06d}.ckpt"
        )
        self.trainer.save_checkpoint(str(path))
        self.stop_reason = (
            f"stopped at step {self.trainer.global_step}: {self.nonfinite.in_a_row} steps in a row had a "
            f"non-finite loss or gradient norm (updates skipped); checkpoint: {path}. Lower the "
            "learning rate, check the data of those steps, or resume with ckpt_path=..."
        )
        self.trainer.should_stop = True

    def configure_optimizers(self):
        from lmstack.config.schema import OptimizerSection

        o = OptimizerSection(**self.hparams.optimizer)
        opt = lookup("optimizer", o.name, "optimizer.name")(self.model, o)
        make_skippable(opt, lambda: self.skip_update)
        sched = Schedule(**self.hparams.schedule)
        peak = sched.peak_lr
        lr_lambda = lambda step: sched.lr(self.tokens_at(step)) / peak if peak else 0.0  # noqa: E731
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
        self._val_sums += torch.stack([(losses * counted).sum(), counted.sum().double(), nbytes.sum().double()])

    def on_validation_epoch_end(self):
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        nats, tokens, nbytes = sums.tolist()
        # reduced over ranks above, so equal on all; sync_dist (a mean of equal values) keeps Lightning's epoch
        # aggregation in step with that, without its warning about unsynced epoch metrics
        self.log("val/loss", nats / max(tokens, 1), sync_dist=True)
        self.log("val/bpb", nats / math.log(2) / max(nbytes, 1), prog_bar=True, sync_dist=True)
        self.last_val = {"step": self.trainer.global_step, "val/bpb": nats / math.log(2) / max(nbytes, 1)}

    # ---- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        guard = {"skipped_steps": self.skipped_steps, "nonfinite_steps": self.nonfinite.total}
        if self.filtered_instances:
            guard["filtered_instances"] = self.filtered_instances
        record = {
            "identity": self.run_identity,
            "tokens": self.tokens_at(checkpoint["global_step"]),
            "world_size": self.trainer.world_size,  # for an elastic resume (lmstack.train.elastic)
            "accumulate": self.trainer.accumulate_grad_batches,
            **({"anneal_from": self.origin} if self.origin else {}),
        }
        add_extras(checkpoint, self.tokenizer_json, self.token_bytes.cpu(), guard, record)

    def on_load_checkpoint(self, checkpoint):
        saved = extras(checkpoint)
        self.tokenizer_json = saved["tokenizer_json"]
        self.skipped_steps = saved["step_guard"].get("skipped_steps", 0)
        self.nonfinite.total = saved["step_guard"].get("nonfinite_steps", 0)
        self.filtered_instances = saved["step_guard"].get("filtered_instances", 0)
        if "tokens" in saved["record"]:
            self.token_base = (checkpoint["global_step"], saved["record"]["tokens"])
        if "accumulate" in saved["record"] and self._trainer is not None:  # resumed with another accumulation
            rescale_loop_progress(checkpoint, saved["record"]["accumulate"], self.trainer.accumulate_grad_batches)
        if saved["token_bytes"] is not None:
            self.token_bytes = saved["token_bytes"].to(self.token_bytes.device)
