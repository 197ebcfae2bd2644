"""Throughput and MFU, logged every N steps.

`perf/tokens_per_s` (global), `perf/mfu` (model FLOP/s over the peak of all devices: the data-sheet
table for GPUs, the fp32 matrix-product rate measured at fit start on CPU), `perf/flops_per_token`,
`perf/peak_memory_gb` (CUDA max allocated, or the process's max RSS on CPU) and `perf/data_wait_fraction`
(time between the end of one step and the start of the next — the wait for the next batch — over the
whole interval). Rates are over the interval since the last log, so one slow step does not dominate.
"""

from __future__ import annotations

import logging
import resource
import time

import lightning as L
import torch
from lmstack.plugins.callbacks import log_metrics

from lmstack.train.flops import flops_per_token, gpu_peak_flops, measure_matmul_flops

log = logging.getLogger("lmstack")


class Throughput(L.Callback):
    def __init__(self, every_n_steps: int = 10, peak_tflops: float | None = None):
        if every_n_steps < 1:
            raise ValueError(f"throughput every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps, self.peak_override = every_n_steps, peak_tflops
        self.peak: float | None = None  # FLOP/s of all devices together

    def on_fit_start(self, trainer, module):
        seq_len = trainer.datamodule.seq_len if trainer.datamodule is not None else module.model.cfg.max_seq_len
        self.fpt = flops_per_token(module.model, seq_len)
        if self.peak_override:
            per_device = self.peak_override * 1e12
        elif module.device.type == "cuda":
            per_device = gpu_peak_flops(torch.cuda.get_device_name(module.device), str(trainer.precision))
        else:
            per_device = measure_matmul_flops()  # every rank measures at once: each gets its share
        self.peak = per_device * trainer.world_size if per_device else None
        if trainer.is_global_zero:
            peak = f"{self.peak / 1e12:.2f} TFLOP/s" if self.peak else "unknown (set peak_tflops for MFU)"
            log.info(
                "throughput: %.1f MFLOP per token; peak of %d device(s): %s", self.fpt / 1e6, trainer.world_size, peak
            )
        self._mark(trainer)
        self.last_end = None

    def _mark(self, trainer) -> None:
        self.t0, self.step0, self.waited = time.perf_counter(), trainer.global_step, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.last_end is not None:
            self.waited += time.perf_counter() - self.last_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.last_end = time.perf_counter()
        steps = trainer.global_step - self.step0
        if steps < self.every_n_steps:
            return
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        elapsed = time.perf_counter() - self.t0
        tokens_per_s = steps * module.context.tokens_per_step / elapsed
        logs = {
            "perf/tokens_per_s": tokens_per_s,
            "perf/flops_per_token": float(self.fpt),
            "perf/data_wait_fraction": self.waited / elapsed,
            "perf/peak_memory_gb": self._peak_memory(module),
        }
        if self.peak:
            logs["perf/mfu"] = tokens_per_s * self.fpt / self.peak
        log_metrics(trainer, logs)
        self._mark(trainer)

    @staticmethod
    def _peak_memory(module) -> float:
        if module.device.type == "cuda":
            return torch.cuda.max_memory_allocated(module.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
