"""The schema of a stage that starts from a checkpoint (`conf/stage/`, `stage=sft|dpo|rlvr|anneal`): one
section for the adaptation stages and mid-training (anneal, which uses only `name`), checked by
`to_dataclass` like every other section. The options a stage does not use are ignored by it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .validate import field_


@dataclass
class StageSection:
    name: Literal["sft", "dpo", "rlvr", "anneal"]  # anneal: mid-training (lmstack/train/anneal.py)
    train_examples: int = field_(1000, min=1)  # per task
    test_examples: int = field_(200, min=1)  # per task, held out (prompts never in train)
    tasks: dict = field_({})  # name (arithmetic, reverse, sort, count, constraints) or a .jsonl -> its options
    test_fraction: float = field_(0.2, min=0.0, max=1.0)  # the share of all prompts in the test split
    system: Optional[str] = None  # a system prompt for every conversation
    epochs: float = field_(1.0, min=0.0)
    max_new_tokens: int = field_(16, min=1)  # answer length for held-out exact match and sampling
    recipe_file: Optional[str] = None  # a recipe.json shared by the stages of a recipe (null: this run's own)
    # sft
    reduction: Literal["mean", "sum"] = "mean"  # mean over trainable tokens, or sum / token slots
    data: Optional[str] = None  # sft, dpo: a .jsonl(.gz) or .parquet of chat rows instead of the tasks
    max_turns: Optional[int] = field_(None, min=1)  # stage.data: keep at most this many assistant turns
    # dpo
    loss: Literal["sigmoid", "dpo_norm", "simpo"] = "dpo_norm"
    beta: Optional[float] = field_(None, min=0.0)  # null: dpo 0.1, rlvr 0.0 (the k3 KL weight)
    label_smoothing: float = field_(0.0, min=0.0, max=0.5)
    rpo_alpha: float = field_(0.0, min=0.0)  # + alpha x the chosen answers' NLL (RPO)
    gamma: float = field_(0.5, min=0.0)  # simpo's margin (gamma / beta)
    reference: Literal["cached", "live"] = "cached"  # reference log-probs computed once, or a frozen copy
    rejected_samples: int = field_(4, min=0)  # sampled answers tried per prompt for a wrong one (0: corrupt)
    # rlvr
    group_size: int = field_(8, min=1)  # G samples per prompt
    clip_low: float = field_(0.2, min=0.0)
    clip_high: float = field_(0.28, min=0.0)  # DAPO's clip-higher
    scale_advantages: bool = False  # divide by the group's std (GRPO) or only centre (Dr. GRPO)
    updates_per_rollout: int = field_(1, min=1)  # passes over each rollout (PPO epochs): the ratio moves from 1
    minibatches: int = field_(1, min=1)  # each pass split into this many optimizer steps
    temperature: float = field_(1.0, min=0.0)
    eval_samples: int = field_(4, min=1)  # sampled answers per held-out prompt for the mean reward

    def beta_or_default(self) -> float:
        return self.beta if self.beta is not None else (0.1 if self.name == "dpo" else 0.0)
