"""Deciding, after backward and before the update, whether an optimizer step is taken.

The decision (a non-finite loss or gradient norm, or a plugin such as spike detection) is made on
statistics reduced over all ranks, so every rank skips the same steps. A skipped step still counts: the
global step, the token counter, the data position and the LR schedule advance as if the update had
happened (the batch is dropped, not retried), which keeps a resumed run and the schedule in line with
the token budget; AdamW's moments and step count are left untouched.
"""

from __future__ import annotations

import types

import torch


def make_skippable(optimizer: torch.optim.Optimizer, should_skip) -> torch.optim.Optimizer:
    """Run the closure (forward, backward, clipping) first, then update only if `should_skip()` is false.

    Done on the optimizer instance, before an LR scheduler wraps it, so that Lightning's precision
    plugins, which call `optimizer.step(closure=...)`, keep working unchanged."""
    inner = optimizer.step

    def step(self, closure=None, **kwargs):  # a method, as LR schedulers expect to find one
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if should_skip():
            return loss
        inner(**kwargs)
        return loss

    optimizer.step = types.MethodType(step, optimizer)
    return optimizer


class NonFinite:
    """Counts steps with a non-finite loss or gradient norm; after `patience` in a row the run stops."""

    def __init__(self, patience: int):
        self.patience, self.in_a_row, self.total = patience, 0, 0

    def update(self, finite: bool) -> bool:
        """Records one step; True when the run must stop."""
        self.in_a_row = 0 if finite else self.in_a_row + 1
        self.total += 0 if finite else 1
        return self.patience > 0 and self.in_a_row >= self.patience


class TrainingStopped(RuntimeError):
    """The run stopped itself (after a checkpoint) for the reason in the message."""
