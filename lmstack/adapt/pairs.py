"""Preference pairs from verifiable tasks: chosen = a verified-correct answer (the task's reference),
rejected = a wrong answer sampled from the model being tuned (temperature sampling, kept only when the
verifier says it is wrong), or else a corruption of the reference that the verifier rejects. JSONL tasks
with `rejected` use their own pairs.

Each pair is tokenized as prompt (chat template up to the assistant marker) + response + end marker, with
labels on the response tokens only; `collate_pairs` pads a batch of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lmstack.tasks.answers import sample_answers
from lmstack.tasks.chat_template import END, prompt_ids
from lmstack.tasks.verifiable import Example, Task

from .sft import IGNORE


@dataclass
class Pair:
    example: Example
    chosen: str
    rejected: str
    source: str  # "model" | "corrupted" | "given"


def corrupt(ex: Example, task: Task, rng: random.Random, tries: int = 50) -> str:
    """A near miss of the reference answer that the task's verifier rejects."""
    ref = ex.answer
    for _ in range(tries):
        if ref.lstrip("-").isdigit():
            cand = str(int(ref) + rng.choice([-10, -2, -1, 1, 2, 10]))
        elif len(ref) >= 2 and rng.random() < 0.5:
            i = rng.randrange(len(ref) - 1)
            cand = ref[:i] + ref[i + 1] + ref[i] + ref[i + 2 :]
        else:
            i = rng.randrange(len(ref))
            cand = ref[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") + ref[i + 1 :]
        if cand != ref and task.verify(cand, ex) == 0.0:
            return cand
    return "I do not know."


def build_pairs(
    examples: list[Example],
    tasks: dict[str, Task],
    model=None,
    tok=None,
    samples: int = 4,
    max_new_tokens: int = 16,
    system: str | None = None,
    seed: int = 0,
) -> list[Pair]:
    """One pair per example; with a model, up to `samples` sampled answers are tried for the rejected one."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for ex in examples:
        task = tasks[ex.task]
        if "rejected" in ex.meta:
            pairs.append(Pair(ex, ex.answer, ex.meta["rejected"], "given"))
            continue
        rejected = None
        if model is not None:
            wrong = [
                r.strip()
                for r in sample_answers(
                    model, tok, ex.prompt, samples, max_new_tokens, system, temperature=1.0, generator=gen
                )
            ]
            rejected = next((r for r in wrong if r and task.verify(r, ex) == 0.0), None)
        pairs.append(
            Pair(ex, ex.answer, rejected, "model")
            if rejected
            else Pair(ex, ex.answer, corrupt(ex, task, rng), "corrupted")
        )
    return pairs


def encode_pair(tok, pair: Pair, system: str | None, max_len: int) -> dict[str, list[int]]:
    """Token ids and labels (response tokens only) of the chosen and the rejected sequence."""
    prompt = prompt_ids(tok, pair.example.prompt, system)
    end = tok.token_to_id(END)
    out = {}
    for side, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        response = tok.encode(text).ids + [end]
        ids = (prompt + response)[-max_len - 1 :]
        n = min(len(response), len(ids) - 1)
        labels = [IGNORE] * (len(ids) - 1 - n) + ids[len(ids) - n :]
        out[f"{side}_ids"], out[f"{side}_labels"] = ids[:-1], labels
    return out


def collate_pairs(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad chosen and rejected to one width (so they run as one batch of 2B sequences)."""
    width = max(len(it[f"{s}_ids"]) for it in items for s in ("chosen", "rejected"))
    out: dict[str, torch.Tensor] = {}
    for s in ("chosen", "rejected"):
        ids = torch.zeros(len(items), width, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it[f"{s}_ids"])
            ids[i, :n], labels[i, :n] = torch.tensor(it[f"{s}_ids"]), torch.tensor(it[f"{s}_labels"])
        out[f"{s}_ids"], out[f"{s}_labels"] = ids, labels
    for key in ("ref_chosen", "ref_rejected"):
        if key in items[0]:
            out[key] = torch.tensor([float(it[key]) for it in items], dtype=torch.float64)
    return out
