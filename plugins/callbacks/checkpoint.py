"""Checkpoints: Lightning's ModelCheckpoint, with `last.ckpt` always the state at the end of training.

The pinned Lightning saves `last` at the end of fit only when no `last` was saved earlier, so a budget that
ends between two checkpoint steps (250 steps, a checkpoint every 100) left `last.ckpt` at step 200.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    def on_train_end(self, trainer, pl_module):
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)
