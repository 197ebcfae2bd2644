"""The training LightningModule of every stage. It drives the stage's objective (`objective`: pretraining's
next-token loss; SFT, DPO and GRPO in `lmstack.adapt`) and owns what all stages share: the optimizer and its
schedule, the optimizer step and its skip decision, the validation result, the checkpoint contents.

One optimizer step, read top to bottom: Lightning runs `training_step` (the objective's forward and loss) and
backward for each micro-batch; `optimizer_step` then takes the gradient norm, decides whether the update is
taken (a non-finite loss or norm, nothing to learn from, or a step plugin such as spike detection: the same
decision on every rank, from statistics reduced over ranks), and only then clips and updates. A skipped step
still counts: the global step, the token counter, the data position and the schedule advance as if the update
had happened (the batch is dropped, not retried); the optimizer's moments and step counts are left untouched.

Logged: train/loss, train/grad_norm, train/lr, train/tokens, train/skipped_steps, train/nonfinite_steps and the
objective's own. Activation checkpointing, sharding and compile are applied from outside
(`lmstack.train.parallelize`). What the run gives the module (tokenizer, token bytes, tokens per step, run
identity, document files) arrives as one `RunContext` at construction.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from lmstack.checkpoint import add_extras, extras
from lmstack.config.schema import ConfigError, OptimizerSection, TrainSection
from lmstack.model import ModelConfig, Transformer
from lmstack.registry import lookup

from .context import RunContext
from .elastic import rescale_loop_progress
from .hooks import RewindRequested, StepRecord, step_plugins
from .objective import Objective
from .parallelize import parallelize
from .schedules import Schedule, schedule_args
from .step_guard import NonFinite


class TrainModule(L.LightningModule):
    def __init__(
        self,
        model_cfg: dict,
        optimizer: OptimizerSection,
        schedule: dict,
        train: TrainSection,
        objective: Objective,
        context: RunContext,
        config: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(  # plain values only: checkpoints are read weights-only
            {
                "model_cfg": model_cfg,
                "optimizer": asdict(optimizer),
                "schedule": schedule,
                "objective": objective.options(),
                "config": config,
            }
        )
        self.model_cfg = ModelConfig.from_dict(model_cfg)
        self.model = Transformer(self.model_cfg)
        self.optimizer_cfg, self.schedule_cfg, self.train_cfg = optimizer, schedule, train
        self.objective, self.context = objective, context
        self.strict_loading = not context.lora  # a LoRA stage's checkpoints hold only what trains
        tb = torch.ones(self.model_cfg.vocab_size, dtype=torch.long)
        if context.token_bytes is not None:
            tb.zero_()
            tb[: len(context.token_bytes)] = torch.as_tensor(context.token_bytes).long()
        self.register_buffer("token_bytes", tb, persistent=False)
        self.last_val: dict | None = None  # the latest validation result, with its step
        self.micro: list[dict] = []  # this step's micro-batches (the step record)
        self.rewind_requested: RewindRequested | None = None  # set by a step plugin (hooks.request_rewind)
        self.skip_update, self.skipped_steps = False, 0  # this step's decision; steps skipped so far
        self.nonfinite = NonFinite(train.max_nonfinite_steps)
        self.stop_reason: str | None = None  # set when the run stopped itself (non-finite losses)
        self._must_stop = False
        self.token_base = (0, 0)  # (step, tokens trained before it): from the checkpoint a run resumed
        self.filtered_instances = 0  # training blocks the instance filter took out of the loss, on all ranks
        self._doc_index = None  # lmstack.data.document_index.DocumentIndex, for listing filtered blocks

    def tokens_at(self, step: int) -> int:
        """Tokens trained after `step` optimizer steps (counted from the checkpoint when resumed, so a
        resume with another batch size, allowed by train.resume_changes, still counts right)."""
        base_step, base_tokens = self.token_base
        return base_tokens + (step - base_step) * self.context.tokens_per_step

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    # ---- one optimizer step -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        """One micro-batch: the objective's forward and loss (Lightning runs backward on what this returns)."""
        step = self.objective.training_step(self, batch)
        record = {"batch": batch if step.batch is None else step.batch, "loss": step.reported, "learned": step.learned}
        if step.token_losses is not None:
            record["token_losses"] = step.token_losses
        self.micro.append(record)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/tokens", float(self.tokens_at(self.trainer.global_step + 1)))
        return step.loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        """The end of an optimizer step, in order: the last micro-batch's forward, loss and backward (the earlier
        ones ran during accumulation); the callbacks' `on_before_optimizer_step` (they see the gradients as
        backward left them, as in Lightning); the gradient norm over all shards; the decision; then clipping to
        train.grad_clip and the update by the optimizer itself."""
        optimizer_closure()
        raw = optimizer.optimizer  # the torch optimizer inside Lightning's wrapper
        for callback in self.trainer.callbacks:
            callback.on_before_optimizer_step(self.trainer, self, raw)
        self.on_before_optimizer_step(raw)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads)  # before clipping; a DTensor under FSDP2
        norm = total.full_tensor() if hasattr(total, "full_tensor") else total
        self.log("train/grad_norm", norm)
        self.skip_update = self.decide(norm)
        if self.skip_update:
            return
        if self.train_cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.parameters(), self.train_cfg.grad_clip, total)
        raw.step()

    def decide(self, grad_norm: torch.Tensor) -> bool:
        """True: skip this step's update. The same decision on every rank (from statistics reduced over them)."""
        loss = torch.stack([m["loss"] for m in self.micro]).mean() if self.micro else torch.zeros(())
        filter_on = bool(self.micro) and "filtered" in self.micro[0]["batch"]  # the instance filter
        filtered = sum(float(m["batch"]["filtered"].sum()) for m in self.micro) if filter_on else 0.0
        learned = sum(float(m["learned"]) for m in self.micro)
        stats = [loss.float(), grad_norm.detach().float().to(loss.device), loss.new_tensor(filtered)]
        stats = torch.stack([*stats, loss.new_tensor(learned)])
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="mean")
        loss_v, norm_v, filtered_v, learned_v = stats.tolist()
        if filter_on:
            self.filtered_instances += round(filtered_v * self.trainer.world_size)
            self.log("data/filtered_instances", float(self.filtered_instances))
        finite = math.isfinite(loss_v) and math.isfinite(norm_v)
        skip = not finite
        plugins = step_plugins(self.trainer)
        if plugins:
            files = [str(f) for f in self.context.document_files]
            record = StepRecord(
                self.trainer.global_step, loss_v, norm_v, finite, self.micro, self.context.tokenizer_json, files
            )
            for plugin in plugins:
                skip = bool(plugin.on_step_stats(self.trainer, self, record)) or skip
        skip = skip or learned_v == 0  # nothing to learn from on any rank (SFT, GRPO): no update at all
        self.micro = []
        self.skipped_steps += int(skip)
        self._must_stop = self.nonfinite.update(finite) or self._must_stop
        self.log("train/skipped_steps", float(self.skipped_steps))
        self.log("train/nonfinite_steps", float(self.nonfinite.total))
        return skip

    def request_rewind(self, signal: RewindRequested) -> None:
        """A step plugin asks the run to restart from an earlier checkpoint (`hooks.request_rewind`)."""
        self.rewind_requested = signal
        self.trainer.should_stop = True

    def sequences_to_drop(self, batch, per_token: torch.Tensor) -> torch.Tensor | None:
        """The rows some step plugin asked to leave out of this micro-batch's loss (None: none)."""
        drop = None
        for plugin in step_plugins(self.trainer):
            rows = plugin.on_token_losses(self.trainer, self, batch, per_token)
            if rows is not None:
                drop = rows if drop is None else drop | rows
        return drop if drop is not None and bool(drop.any()) else None

    def list_filtered(self, batch) -> None:
        """This rank's filtered blocks, with their documents, in RUN_DIR/filtered_instances.jsonl."""
        import json

        from lmstack.data.document_index import DocumentIndex

        from .forensics import tokenizer_from_json

        if self._doc_index is None:
            self._doc_index = DocumentIndex(self.context.document_files)
        text = self.context.tokenizer_json
        tok = tokenizer_from_json(text) if text else None
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

    # ---- set-up -------------------------------------------------------------------------------------
    def configure_model(self):
        """Sharding strategies (FSDP2) shard the model here, on every rank, before optimizers exist."""
        trainer = self._trainer
        shard = getattr(trainer.strategy, "shard", None) if trainer is not None else None
        parallelize(self.model, self.train_cfg.activation_checkpointing, self.train_cfg.compile, shard)

    def configure_optimizers(self):
        o = self.optimizer_cfg
        opt = lookup("optimizer", o.name, "optimizer.name")(self.model, o)
        sched = Schedule(**self.schedule_cfg)
        peak = sched.peak_lr
        lr_lambda = lambda step: sched.lr(self.tokens_at(step)) / peak if peak else 0.0  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self):
        if getattr(self.trainer.strategy.precision_plugin, "scaler", None) is not None:
            raise ConfigError(
                f"trainer.precision={self.trainer.precision} scales the loss with a gradient scaler, which lmstack's "
                "optimizer step does not run: use bf16-mixed or 32-true"
            )
        if self.context.optimizer_state is not None:  # stage=anneal: AdamW's moments and step counts carry on
            self.trainer.optimizers[0].load_state_dict(self.context.optimizer_state)

    # ---- validation: the objective's sums ---------------------------------------------------------------
    def on_validation_epoch_start(self):
        self.objective.validation_start(self)

    def validation_step(self, batch, batch_idx):
        self.objective.validation_step(self, batch)

    def on_validation_epoch_end(self):
        self.last_val = self.objective.validation_end(self)

    # ---- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        guard = {"skipped_steps": self.skipped_steps, "nonfinite_steps": self.nonfinite.total}
        if self.filtered_instances:
            guard["filtered_instances"] = self.filtered_instances
        origin = self.context.origin
        record = {
            "identity": self.context.run_identity,
            "tokens": self.tokens_at(checkpoint["global_step"]),
            "world_size": self.trainer.world_size,  # for an elastic resume (lmstack.train.elastic)
            "accumulate": self.trainer.accumulate_grad_batches,
            **({"anneal_from": origin} if origin else {}),
            **({"lora": self.context.lora} if self.context.lora else {}),
        }
        add_extras(checkpoint, self.context.tokenizer_json, self.token_bytes.cpu(), guard, record)
        if self.context.lora:  # a LoRA stage keeps what trains; the frozen base is its recorded checkpoint
            from lmstack.adapt.lora import trainable_keys

            keep = trainable_keys(self.model, prefix="model.")
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint):
        saved = extras(checkpoint)
        self.context.tokenizer_json = saved["tokenizer_json"]
        self.skipped_steps = saved["step_guard"].get("skipped_steps", 0)
        self.nonfinite.total = saved["step_guard"].get("nonfinite_steps", 0)
        self.filtered_instances = saved["step_guard"].get("filtered_instances", 0)
        if "tokens" in saved["record"]:
            self.token_base = (checkpoint["global_step"], saved["record"]["tokens"])
        if "accumulate" in saved["record"] and self._trainer is not None:  # resumed with another accumulation
            rescale_loop_progress(checkpoint, saved["record"]["accumulate"], self.trainer.accumulate_grad_batches)
        if saved["token_bytes"] is not None:
            self.token_bytes = saved["token_bytes"].to(self.token_bytes.device)


def build_module(spec, model_cfg: dict, total_tokens: int, objective: Objective, context: RunContext, config=None):
    """The training module of a validated RunSpec for any stage: its optimizer, schedule (over `total_tokens`)
    and step options from the spec, the stage's objective and the run's context."""
    schedule = schedule_args(spec.schedule, spec.optimizer.lr, total_tokens)
    return TrainModule(model_cfg, spec.optimizer, schedule, spec.train, objective, context, config)
