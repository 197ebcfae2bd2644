"""What the optimizer step's skip decision counts (`lmstack.train.module.TrainModule.optimizer_step` decides):
steps with a non-finite loss or gradient norm, and the stop after too many in a row."""

from __future__ import annotations


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
