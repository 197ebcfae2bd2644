"""Checkpoints: Lightning's ModelCheckpoint, with `last.ckpt` always the state at the end of training, and
the time training stalls for each save logged (train.log, and the metric `checkpoint/stall_s`: gathering the
state, and writing it, or with `train.async_checkpoint=true` only staging it to CPU and waiting for the write
before); the run's closing summary gives their sum.

A `last.ckpt` due at the step a step checkpoint was just written is that checkpoint, hard-linked
(`lmstack.checkpoint.copy_checkpoint`), not a second write of the same state.

The pinned Lightning saves `last` at the end of fit only when no `last` was saved earlier, so a budget that
ends between two checkpoint steps (250 steps, a checkpoint every 100) left `last.ckpt` at step 200.
"""

from __future__ import annotations

import logging
import time

from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger("lmstack")


class Checkpoint(ModelCheckpoint):
    def __init__(self, *args, **kwargs):
        # a run directory has one run (lmstack.rundir): its last.ckpt is replaced, never versioned as last-v1.ckpt
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self.stalls: list[tuple[int, float]] = []  # (step, seconds training waited) per save

    def on_train_end(self, trainer, pl_module):
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        started = time.perf_counter()
        src = self._last_checkpoint_saved
        if (
            filepath == self.last_model_path
            and src
            and src != filepath
            and self._last_global_step_saved == trainer.global_step
        ):
            self._copy(trainer, src, filepath)
        else:
            super()._save_checkpoint(trainer, filepath)
        stall = time.perf_counter() - started
        self.stalls.append((trainer.global_step, stall))
        log.debug("checkpoint %s: training stalled %.3f s", filepath, stall)  # the log file; the run sums them
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"checkpoint/stall_s": stall}, step=trainer.global_step)

    def _copy(self, trainer, src: str, dst: str) -> None:
        from lmstack.checkpoint import copy_checkpoint

        copy = getattr(trainer.strategy, "copy_checkpoint", None)  # a strategy that may still be writing src
        if copy is not None:
            copy(src, dst)
        else:
            if trainer.is_global_zero:
                copy_checkpoint(src, dst)
            trainer.strategy.barrier("lmstack_checkpoint_copied")
        self._last_checkpoint_saved = dst
