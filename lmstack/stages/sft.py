"""`stage=sft`: supervised fine-tuning from init_from on verifiable tasks (or a chat dataset, stage.data=FILE)
rendered with the chat template: assistant-only loss, conversations packed into data.seq_len rows without
attention across them (`lmstack.adapt.sft`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from lmstack.adapt.data import RowsDataModule
from lmstack.adapt.examples import conversation
from lmstack.adapt.sft import SFTObjective, pack
from lmstack.config.schema import ConfigError
from lmstack.config.validate import field_
from lmstack.registry import register
from lmstack.tasks.chat_template import render

from .adapt import AdaptSection, AdaptStage


@dataclass
class SFTSection(AdaptSection):
    reduction: Literal["mean", "sum"] = "mean"  # mean over trainable tokens, or sum / token slots
    data: Optional[str] = None  # a .jsonl(.gz) or .parquet of chat rows instead of the tasks
    max_turns: Optional[int] = field_(None, min=1)  # stage.data: keep at most this many assistant turns


@register("stage", "sft")
class SFT(AdaptStage):
    section = SFTSection

    def examples(self, tok):
        o = self.options
        self.convs = self.held = self.counts = None  # stage.data: the conversations and the held-out ones
        if not o.data:
            return super().examples(tok)
        from lmstack.adapt.chat_data import ChatTask, chat_conversations, last_turn_example

        try:  # a chat dataset, held-out rows by a hash of the row
            convs, held, self.counts = chat_conversations(
                o.data, tok, self.spec.data.seq_len + 1, o.test_fraction, o.max_turns, o.system
            )
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"stage.data: {e}") from None
        self.convs, self.held = convs, held[: o.test_examples]
        train = [last_turn_example(c) for c in self.convs]
        return train, [last_turn_example(c) for c in self.held], {ChatTask.name: ChatTask(train)}

    def training_data(self, model, tok):
        seq_len, system = self.spec.data.seq_len, self.options.system
        convs, held = self.convs, self.held
        if convs is None:
            convs, held = [conversation(e, system) for e in self.train], [conversation(e, system) for e in self.test]
        train_data = pack([render(tok, c) for c in convs], seq_len)
        val_data = pack([render(tok, c) for c in held], seq_len)
        n_train = len(train_data["input_ids"])
        what = f"{len(self.train)} conversations in {n_train} packed rows of {seq_len} tokens"
        extra = {}
        if self.counts is not None:
            what += " (rows of " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) + ")"
            extra["rows"] = dict(self.counts)
        return train_data, val_data, n_train, what, extra

    def objective(self, model, tok):
        return SFTObjective(self.options.reduction)

    def datamodule(self, train_data, val_data):
        return RowsDataModule(train_data, val_data, self.spec.data.batch_size, self.spec.seed)
