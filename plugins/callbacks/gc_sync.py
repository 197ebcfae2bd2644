"""Garbage collection at the same step on every rank.

Python's automatic collector runs whenever allocation counts cross a threshold, at different moments on
different ranks; a rank that pauses to collect makes every other rank wait at the next collective. So,
as OLMo-core's GC callback does: automatic collection is off during fit, a collection of the configured
generation runs every `every_n_steps` steps on all ranks at once, its time is logged (`gc/seconds`,
`gc/collections`), and the collector's previous state returns when fit ends.
"""

from __future__ import annotations

import gc
import time

import lightning as L
from lmstack.plugins.callbacks import log_metrics


class GCSync(L.Callback):
    def __init__(self, every_n_steps: int = 50, generation: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"gc every_n_steps={every_n_steps} must be >= 1")
        if generation not in (0, 1, 2):
            raise ValueError(f"gc generation={generation}; allowed: 0, 1, 2")
        self.every_n_steps, self.generation = every_n_steps, generation
        self.was_enabled: bool | None = None
        self.collected_at: list[int] = []  # global steps after which a collection ran (for logs and tests)
        self.seconds = 0.0

    def on_fit_start(self, trainer, pl_module):
        self.was_enabled = gc.isenabled()
        gc.disable()
        gc.collect(self.generation)  # start every rank from the same state

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or (self.collected_at and self.collected_at[-1] == step):
            return  # (with gradient accumulation, several batches end at the same global step)
        t0 = time.perf_counter()
        gc.collect(self.generation)
        self.seconds += time.perf_counter() - t0
        self.collected_at.append(step)
        log_metrics(trainer, {"gc/seconds": self.seconds, "gc/collections": float(len(self.collected_at))})

    def _restore(self) -> None:
        if self.was_enabled:
            gc.enable()
        self.was_enabled = None

    def on_fit_end(self, trainer, pl_module):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()
