"""What a training run hands its module and its callbacks, once, at construction: the contract a callback may read
(`trainer.lightning_module.context`), and nothing assigned to the module from outside afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch


@dataclass
class RunContext:
    """The run's facts that training, checkpoints and callbacks need besides the model and the config."""

    tokenizer_json: Optional[str] = None  # saved in checkpoints so they are self-contained
    token_bytes: Optional[torch.Tensor] = None  # UTF-8 bytes per token id (bits per byte); None: 1 each
    tokens_per_step: int = 1  # the global batch in tokens
    run_identity: Optional[dict] = None  # what an exact resume needs unchanged (saved and checked on resume)
    document_files: list = field(default_factory=list)  # per data source: its documents.jsonl (step records)
    optimizer_state: Optional[dict] = None  # stage=anneal: the checkpoint's AdamW state, loaded at fit start
    origin: Optional[dict] = None  # stage=anneal: the checkpoint it started from (kept in its checkpoints)
    lora: Optional[dict] = None  # stage.lora: the base and the adapters' options (lmstack.adapt.lora.lora_record)


class TrainingRun(Protocol):
    """What a callback may read of the training module (`trainer.lightning_module`); nothing else of it is part of
    the plugin contract. Step plugins (`lmstack.train.hooks.StepHooks`) get a `StepRecord` besides."""

    model: torch.nn.Module  # the plain PyTorch model (sharded or compiled from outside)
    context: RunContext
    token_bytes: torch.Tensor  # `context.token_bytes` on the module's device, one entry per vocabulary id
    device: torch.device

    def tokens_at(self, step: int) -> int:
        """Tokens trained after `step` optimizer steps."""
