"""Held-out exact match: greedy answers through the chat template, judged by each task's verifier."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from lmstack.generate import generate_batch, generate_many

from .chat_template import END, prompt_ids
from .verifiable import Example, Task


@torch.no_grad()
def answer(
    model,
    tok,
    prompt: str,
    max_new_tokens: int,
    system: str | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> str:
    """The model's response through the chat template (greedy unless a temperature is given)."""
    return sample_answers(model, tok, prompt, 1, max_new_tokens, system, temperature, generator)[0]


@torch.no_grad()
def sample_answers(
    model,
    tok,
    prompt: str,
    n: int,
    max_new_tokens: int,
    system: str | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """n sampled responses to one prompt, decoded as one batch."""
    rows = generate_many(
        model,
        prompt_ids(tok, prompt, system),
        n,
        max_new_tokens,
        temperature=temperature,
        eos_id=tok.token_to_id(END),
        generator=generator,
    )
    return [tok.decode(ids) for ids in rows]  # special tokens (the end marker) are dropped


@torch.no_grad()
def greedy_answers(
    model,
    tok,
    prompts: list[str],
    max_new_tokens: int,
    system: str | None = None,
    sync: Optional[Callable[[bool], bool]] = None,
) -> list[str]:
    """Greedy responses to several prompts through the chat template, decoded as one batch (`sync`: ranks
    of a sharded model decode in lockstep, see `lmstack.generate.generate_batch`)."""
    rows = generate_batch(
        model,
        [prompt_ids(tok, p, system) for p in prompts],
        1,
        max_new_tokens,
        temperature=0.0,
        eos_id=tok.token_to_id(END),
        sync=sync,
    )
    return [tok.decode(ids) for ids in rows]


def exact_match(
    model,
    tok,
    examples: list[Example],
    tasks: dict[str, Task],
    max_new_tokens: int = 16,
    system: str | None = None,
    batch_size: int = 16,
) -> dict:
    """{"exact_match": mean verifier score, "n": examples, "samples": the first few (prompt, response)}."""
    was_training = model.training
    model.eval()
    scores, samples = [], []
    try:
        for b in range(0, len(examples), batch_size):
            chunk = examples[b : b + batch_size]
            for ex, response in zip(
                chunk, greedy_answers(model, tok, [e.prompt for e in chunk], max_new_tokens, system)
            ):
                scores.append(tasks[ex.task].verify(response, ex))
                if len(samples) < 5:
                    samples.append({"prompt": ex.prompt, "response": response, "answer": ex.answer})
    finally:
        model.train(was_training)
    return {"exact_match": sum(scores) / max(len(scores), 1), "n": len(scores), "samples": samples}
