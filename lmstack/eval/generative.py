"""Generative evals: held-out prompts of verifiable tasks answered greedily and scored by the task's verifier.

A generative task of the eval suite (`evals.generative`, or a name given to `lmstack eval`) is

    NAME: {task: arithmetic, options: {digits: 2}, examples: 200, seed: 0, test_fraction: 0.2,
           max_new_tokens: 16, system: null}

`task` is a registered verifiable task (`lmstack.tasks.verifiable`: arithmetic, reverse, sort, count,
constraints, a plugin's) or a JSONL file of {prompt, answer} (its first `examples`); a task's `examples`
are drawn from its test split by `seed` and `test_fraction` as the adaptation stages draw their held-out
prompts (conf/evals/chat.yaml gives the run's seed and the stage's fraction, so it scores the prompts of
the stage's `recipe.json` exact match). Prompts go through the chat template, so
the model needs its tokens (a stage=sft, dpo or rlvr checkpoint); a base model is scored generatively with
an lm-evaluation-harness `generate_until` task instead (`lmstack.eval.harness`).

Every rank decodes its share (examples r, r + world, ...) in batches; ranks decode as many batches as each
other, in lockstep, so a sharded model's collectives line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

GENERATIVE_KEYS = {"task", "options", "examples", "seed", "test_fraction", "max_new_tokens", "system"}


@dataclass
class GenerativeTask:
    task: object  # lmstack.tasks.verifiable.Task
    examples: list  # lmstack.tasks.verifiable.Example, the held-out prompts
    max_new_tokens: int = 16
    system: Optional[str] = None


def check_generative(name: str, spec, where: str = "evals") -> None:
    if not isinstance(spec, dict) or not spec.get("task"):
        raise ValueError(f"{where}.generative.{name} needs `task`: a verifiable task's name or a JSONL file")
    extra = set(spec) - GENERATIVE_KEYS
    if extra:
        raise ValueError(f"{where}.generative.{name}: unknown key {sorted(extra)[0]!r}")


def load_generative(name: str, spec: dict, tok) -> GenerativeTask:
    from lmstack.tasks.chat_template import has_chat_tokens
    from lmstack.tasks.verifiable import JsonlTask, make_task

    check_generative(name, spec)
    if not has_chat_tokens(tok):
        raise ValueError(
            f"generative task {name!r} answers through the chat template and this model's tokenizer has no chat "
            "tokens (a stage=sft, dpo or rlvr checkpoint has them); score a base model with an lm-eval "
            "generate_until task (harness_tasks)"
        )
    task = make_task(spec["task"], **(spec.get("options") or {}))
    n = int(spec.get("examples") or 200)
    if isinstance(task, JsonlTask):  # a user's file: its own examples, the first n
        examples = task.examples[:n]
    else:
        examples = task.generate(n, "test", int(spec.get("seed") or 0), float(spec.get("test_fraction") or 0.2))
    return GenerativeTask(task, examples, int(spec.get("max_new_tokens") or 16), spec.get("system"))


@torch.no_grad()
def generative_hits(
    model,
    tok,
    g: GenerativeTask,
    batch_size: int = 16,
    rank: int = 0,
    world: int = 1,
    sync: Optional[Callable[[bool], bool]] = None,
) -> torch.Tensor:
    """float64 [2]: this rank's verifier score summed over its examples, and how many it scored."""
    from lmstack.tasks.answers import greedy_answers

    mine = g.examples[rank::world]
    most = max(len(g.examples[r::world]) for r in range(world))
    score = 0.0
    for b in range(math.ceil(most / batch_size)):
        chunk = mine[b * batch_size : (b + 1) * batch_size]
        prompts = [ex.prompt for ex in chunk] or [g.examples[0].prompt]  # a rank out of examples joins in
        responses = greedy_answers(model, tok, prompts, g.max_new_tokens, g.system, sync)
        score += sum(g.task.verify(r, ex) for ex, r in zip(chunk, responses))
    return torch.tensor([score, len(mine)], dtype=torch.float64)
