"""The Trainer every stage runs on: the configured callbacks, logger and strategy, atomic checkpoint writes and
weights-only reads (`lmstack.checkpoint`), and the step budget."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from lmstack.config.schema import ConfigError, RunSpec

log = logging.getLogger("lmstack")


class StepProgress(RichProgressBar):
    """Lightning's rich bar, named for what a stage counts: optimizer steps out of the budget (Lightning's own
    title reads `Epoch 0/-2` for a run bounded by steps)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}"


def validate_quietly(trainer: L.Trainer, module, data) -> dict:
    """`trainer.validate` without a progress bar of its own: the stage prints the result as one line."""
    bar = trainer.progress_bar_callback
    if bar is not None:
        bar.disable()
    try:
        return trainer.validate(module, datamodule=data, verbose=False)[0]
    finally:
        if bar is not None:
            bar.enable()


def build_trainer(spec: RunSpec, extra_callbacks=(), pretraining_plugins: bool = True) -> L.Trainer:
    """The Trainer with the configured callbacks (without the step plugins that are `pretraining_only` unless
    `pretraining_plugins`), the in-loop evaluator, logger and strategy, and the step progress bar unless
    another bar is configured or `trainer.enable_progress_bar=false`."""
    from lmstack.checkpoint import checkpoint_io
    from lmstack.train.hooks import StepHooks

    callbacks = [hydra.utils.instantiate(cb) for cb in spec.callbacks.values() if cb]
    if not pretraining_plugins:
        callbacks = [cb for cb in callbacks if not (isinstance(cb, StepHooks) and cb.pretraining_only)]
    if spec.evals is not None:
        callbacks.append(hydra.utils.instantiate(spec.evals))
    logger = hydra.utils.instantiate(spec.logger) if spec.logger else False
    strategy = hydra.utils.instantiate(spec.strategy) if "_target_" in spec.strategy else spec.strategy["name"]
    if spec.train.async_checkpoint:
        if not getattr(strategy, "_save_distributed_checkpoint", False) or not hasattr(strategy, "async_checkpoint"):
            raise ConfigError(
                "train.async_checkpoint=true writes sharded checkpoints in the background: it needs strategy=fsdp "
                "with strategy.save_distributed_checkpoint=true"
            )
        strategy.async_checkpoint = True
    if spec.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgress())
    accum = spec.trainer.get("accumulate_grad_batches", 1)
    return L.Trainer(
        **spec.trainer,
        max_steps=1,  # the budget needs the world size, which the Trainer decides: see `set_budget`
        max_epochs=-1,
        callbacks=[*callbacks, *extra_callbacks],
        logger=logger,
        strategy=strategy,
        default_root_dir=spec.run_dir,
        log_every_n_steps=spec.train.log_every_steps,
        val_check_interval=spec.train.val_every_steps * accum,
        check_val_every_n_epoch=None,
        use_distributed_sampler=False,
        gradient_clip_val=None,
        plugins=[checkpoint_io()],
    )


def set_budget(trainer: L.Trainer, max_steps: int) -> None:
    """The stage's number of optimizer steps, once the trainer knows its world size (the one place lmstack
    sets it: Lightning takes `max_steps` only at construction, before the world size is known)."""
    trainer.fit_loop.epoch_loop.max_steps = max_steps


def tokens_per_step(spec: RunSpec, trainer: L.Trainer) -> int:
    return spec.data.seq_len * spec.data.batch_size * trainer.accumulate_grad_batches * trainer.world_size


def check_global_batch(spec: RunSpec, tokens: int) -> None:
    """The tutorial's warning: past a point a larger global batch stops helping (and more GPUs raise it)."""
    limit = spec.train.max_global_batch_tokens
    if limit is None or tokens <= limit:
        return
    msg = (
        f"the global batch is {tokens:,} tokens (seq_len x batch_size x accumulation x world size), above "
        f"train.max_global_batch_tokens={limit:,}; lower data.batch_size or trainer.accumulate_grad_batches"
    )
    if spec.train.batch_guard == "fail":
        raise ConfigError(msg)
    log.warning(msg)
