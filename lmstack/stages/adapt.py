"""What the adaptation stages (SFT, DPO, GRPO) share: the checkpoint's model and tokenizer with the chat tokens
added (and the embedding grown), the stage's tasks rendered with the chat template, pretraining's Trainer,
optimizer, schedule, strategy, logging and checkpoints on the stage's objective; held-out exact match before
and after, and the stage's numbers in `<run_dir>/recipe.json` (stage -> numbers, merged with what earlier
stages of the recipe wrote there). A stage subclass says what its data, objective and data module are."""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lmstack.adapt.examples import record, split_examples, stage_tasks
from lmstack.adapt.lora import AdaptersOff, LoraSection, apply_lora, lora_record, trainable_parameters
from lmstack.config.stage import StageSection
from lmstack.config.validate import field_
from lmstack.tasks.answers import exact_match
from lmstack.tasks.chat_template import add_chat_tokens, resize_vocab
from lmstack.train.context import RunContext
from lmstack.train.module import build_module

from .base import Stage
from .trainer import set_budget


@dataclass
class AdaptSection(StageSection):
    train_examples: int = field_(1000, min=1)  # per task
    test_examples: int = field_(200, min=1)  # per task, held out (prompts never in train)
    tasks: dict = field_({})  # name (arithmetic, reverse, sort, count, constraints) or a .jsonl -> its options
    test_fraction: float = field_(0.2, min=0.0, max=1.0)  # the share of all prompts in the test split
    system: Optional[str] = None  # a system prompt for every conversation
    epochs: float = field_(1.0, min=0.0)  # passes over the training examples
    max_new_tokens: int = field_(16, min=1)  # answer length for held-out exact match and sampling
    recipe_file: Optional[str] = None  # a recipe.json shared by the stages of a recipe (null: this run's own)
    lora: Optional[LoraSection] = None  # low-rank adapters on a frozen base (lmstack.adapt.lora); null: full


class AdaptStage(Stage):
    """The shared flow; subclasses define `examples`, `training_data`, `objective` and `datamodule`."""

    section = AdaptSection
    steps_per_batch = 1  # optimizer steps taken on each batch (GRPO's updates per rollout)

    def build(self, trainer):
        from lmstack.checkpoint import base_record, load_checkpoint
        from lmstack.config.schema import ConfigError
        from lmstack.data.tokenizer import token_byte_lengths

        spec, opts = self.spec, self.options
        model, tok, _ = load_checkpoint(spec.init_from)
        if tok is None:
            raise ConfigError(f"init_from={spec.init_from!r} carries no tokenizer")
        known = tok.get_vocab_size()
        tok = add_chat_tokens(tok)
        new_tokens = list(range(known, tok.get_vocab_size()))  # the chat tokens this stage adds
        resize_vocab(model, tok.get_vocab_size())
        self.tok, self.start = tok, model
        self.adapters_off = AdaptersOff() if opts.lora else None
        self.train, self.test, self.tasks = self.examples(tok)
        per_step = spec.data.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        train_data, val_data, n_train, self.what, self.extra = self.training_data(model, tok)
        max_steps = max(1, math.ceil(opts.epochs * n_train / per_step)) * self.steps_per_batch
        set_budget(trainer, max_steps)
        self.max_steps = max_steps
        tps = per_step * spec.data.seq_len
        context = RunContext(
            tokenizer_json=tok.to_str(),
            token_bytes=torch.from_numpy(token_byte_lengths(tok)),
            tokens_per_step=tps,
            lora=lora_record(base_record(spec.init_from), opts.lora, new_tokens) if opts.lora else None,
        )
        cfg = model.cfg.with_backend(spec.model.attention.backend).to_dict()
        module = build_module(spec, cfg, max_steps * tps, self.objective(model, tok), context, self.config)
        module.model.load_state_dict(model.state_dict())
        if opts.lora:
            apply_lora(module.model, opts.lora, new_tokens)
            self.adapters_off.policy = module.model
        return module, self.datamodule(train_data, val_data)

    def reference(self, model):
        """The frozen starting model as a reference policy: a copy, or with LoRA the policy with its adapters
        off (no second copy of the weights)."""
        from lmstack.adapt.dpo import frozen_copy

        return self.adapters_off if self.options.lora else frozen_copy(model)

    def examples(self, tok) -> tuple[list, list, dict]:
        """(train examples, held-out examples, the tasks that verify them by name): the configured tasks'."""
        tasks = stage_tasks(self.options)
        train, test = split_examples(self.options, tasks, self.spec.seed)
        return train, test, tasks

    @abstractmethod
    def training_data(self, model, tok) -> tuple:
        """(train data, validation data or None, training items, a phrase for them, extra numbers to record)."""

    @abstractmethod
    def objective(self, model, tok):
        """The stage's objective (lmstack.train.objective.Objective) for the starting `model`."""

    @abstractmethod
    def datamodule(self, train_data, val_data):
        """The data module serving `training_data`'s train and validation data."""

    def before(self, trainer, module, data) -> dict:
        start, self.start = self.start, None  # not kept through training: a reference is the objective's own
        if not trainer.is_global_zero:
            return {}
        before = {"exact_match": self._exact_match(start)["exact_match"], **self.measure(start)}
        extra = "".join(f", {self.describe(k)} {v:.3f}" for k, v in before.items() if k != "exact_match")
        trains, total = trainable_parameters(module.model)
        lora = f" (LoRA rank {self.options.lora.rank})" if self.options.lora else ""
        print(
            f"stage {self.spec.stage.name}: {self.what}, {len(self.test)} held out; {self.max_steps} steps; "
            f"{trains:,} of {total:,} parameters train{lora}; "
            f"held-out exact match before: {before['exact_match']:.3f}" + extra
        )
        return before

    def measure(self, model) -> dict:
        """The stage's own numbers of a model besides exact match (before and after training)."""
        return {}

    def describe(self, key: str) -> str:
        return key.replace("_", " ")

    def _exact_match(self, model) -> dict:
        o = self.options
        return exact_match(model.eval(), self.tok, self.test, self.tasks, o.max_new_tokens, o.system)

    def finish(self, trainer, module, data, before: dict, owned) -> dict:
        from lmstack.checkpoint import load_checkpoint

        run_dir, name = Path(self.spec.run_dir), self.spec.stage.name
        result = {"steps": trainer.global_step, "run_dir": str(run_dir)}
        if not trainer.is_global_zero:
            return result
        last = run_dir / "checkpoints" / "last.ckpt"
        final = module.model if trainer.world_size == 1 else load_checkpoint(str(last))[0]
        after = self._exact_match(final)
        numbers = {
            "exact_match": after["exact_match"],
            "exact_match_before": before["exact_match"],
            "held_out": after["n"],
            "train_examples": len(self.train),
            "steps": trainer.global_step,
            "trainable_parameters": trainable_parameters(module.model)[0],
            "checkpoint": str(last),
            **self.extra,
            **self.recorded(module, final, before),
        }
        path = record(run_dir, name, numbers, self.options.recipe_file)
        result.update(numbers, objective=1.0 - after["exact_match"])
        for s in after["samples"][:3]:
            print(f"  {s['prompt']!r} -> {s['response']!r} (answer {s['answer']!r})")
        print(
            f"held-out exact match: {before['exact_match']:.3f} -> {after['exact_match']:.3f}"
            + "".join(f"; {text}" for text in self.summary(numbers))
            + f"; {path}"
        )
        return result

    def recorded(self, module, final, before: dict) -> dict:
        """The stage's own numbers for recipe.json, after training."""
        return {}

    def summary(self, numbers: dict) -> list[str]:
        """The stage's own phrases for the closing line."""
        return []
