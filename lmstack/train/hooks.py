"""The contract between the training module and its step plugins (spike detection and the like).

A Lightning callback that also derives from `StepHooks` sees each micro-batch's per-token losses before
backward (`on_token_losses`, which may take sequences out of that micro-batch's loss), and is asked, once per
optimizer step after backward,
whether the update should be skipped: `on_step_stats(trainer, module, record)` gets a `StepRecord` with the
step's loss and gradient norm (reduced over ranks, so every rank decides the same), this rank's micro-batches
with their per-token losses, the tokenizer and the documents behind each data source. Nothing else of the
module or the data module is part of the contract.

A plugin that wants the run restarted from an earlier checkpoint calls `request_rewind(trainer, signal)`: the
fit stops, the run (`lmstack.run`) builds a fresh trainer and module from `signal.checkpoint`, hands the
signal to every `StepHooks` plugin of the new trainer (`on_rewind`) and fits again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class StepRecord:
    """What one optimizer step trained on and how it went."""

    step: int  # the global step being decided (before the update)
    loss: float  # mean cross-entropy of the step's micro-batches, averaged over ranks
    grad_norm: float  # before clipping, over all shards
    finite: bool  # both finite; a non-finite step is skipped by the module whatever the plugins say
    # this rank's micro-batches: {"batch": {"input_ids", "labels", "doc", "source"}, "token_losses", "loss"}
    micro_batches: list[dict] = field(default_factory=list)
    tokenizer_json: Optional[str] = None
    document_files: list[str] = field(default_factory=list)  # per source index: its documents.jsonl (ids)


@dataclass
class RewindRequested:
    """Restart from `checkpoint`, skipping the updates of `skip_steps` on the way forward; `state` is what the
    requesting plugin carries over to its fresh instance (counters)."""

    checkpoint: str
    skip_steps: set[int]
    state: dict = field(default_factory=dict)


class StepHooks:
    """Base of plugins that take part in the step decision; mix into a `lightning.Callback`."""

    pretraining_only = False  # True: left out of adaptation stages (e.g. it traces pretraining documents)

    def on_token_losses(self, trainer, module, batch: dict, token_losses):
        """A micro-batch's detached per-token losses [rows, T] (0 where not learned), before backward:
        return a bool [rows] of sequences to leave out of this micro-batch's loss, or None to keep all."""
        return None

    def on_step_stats(self, trainer, module, record: StepRecord) -> bool:
        """True: skip this step's update (on every rank: the inputs are the same everywhere)."""
        return False

    def on_rewind(self, signal: RewindRequested) -> None:
        """Called on the plugins of the trainer that resumes from `signal.checkpoint`."""


def request_rewind(trainer, signal: RewindRequested) -> None:
    """Stop the fit and ask the run to resume from `signal.checkpoint`."""
    trainer.lightning_module.request_rewind(signal)


def step_plugins(trainer) -> list[StepHooks]:
    return [cb for cb in trainer.callbacks if isinstance(cb, StepHooks)]
