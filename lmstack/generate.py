"""Sampling with a KV cache: greedy, temperature, top-k and top-p (checkpoints load through `lmstack.checkpoint`)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from lmstack.model import Documents, Transformer


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def ranks_done(reduce: Callable[[torch.Tensor], torch.Tensor], device) -> Callable[[bool], bool]:
    """`sync` for `generate_batch` on several ranks: True once no rank has a row left to decode (`reduce`
    sums a tensor over ranks; one all-reduce per decoding step)."""

    def all_done(done: bool) -> bool:
        return float(reduce(torch.tensor(float(not done), device=device))) == 0.0

    return all_done


@torch.no_grad()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
) -> list[int]:
    """Continue `prompt_ids`; temperature 0 is greedy. Returns the new tokens only."""
    return generate_many(model, prompt_ids, 1, max_new_tokens, temperature, top_k, top_p, eos_id, use_cache, generator)[
        0
    ]


@torch.no_grad()
def generate_many(
    model: Transformer,
    prompt_ids: list[int],
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
    sync: Optional[Callable[[bool], bool]] = None,
) -> list[list[int]]:
    """n continuations of one prompt decoded as one batch (GRPO's group, several samples per prompt): each
    row ends at its own EOS (kept) while the others go on. Returns each row's new tokens.

    `sync(done_here) -> done_everywhere`, for a model sharded over ranks (FSDP2), whose every forward pass
    gathers parameters from all of them: every rank then runs one forward pass per step until all ranks are
    done; a rank done early runs a one-token pass that only joins the gathers."""
    return generate_batch(
        model, [prompt_ids], n, max_new_tokens, temperature, top_k, top_p, eos_id, use_cache, generator, sync
    )


@torch.no_grad()
def generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
    sync: Optional[Callable[[bool], bool]] = None,
    stop: Optional[Callable[[int, list[int]], bool]] = None,
) -> list[list[int]]:
    """n continuations of each prompt, all decoded as one batch (rows prompt by prompt, as `generate_many`
    orders one prompt's): prompts of different lengths are padded on the left, and the padding is a document
    of its own (`lmstack.model.Documents`), so no row attends to it; RoPE is relative, so a padded row
    computes what it would alone. `stop(row, new_tokens)` ends a row early (a stop string it wrote)."""
    if not prompts or not all(prompts):
        raise ValueError("a prompt is empty: give at least one token")
    device = next(model.parameters()).device
    limit = model.cfg.max_seq_len
    prompts = [p[-(limit - 1) :] if len(p) >= limit else p for p in prompts]
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(n)]
    tokens = torch.tensor([[0] * (width - len(p)) + p for p in rows], device=device)
    pads = torch.tensor([width - len(p) for p in rows], device=device)
    real = None  # document ids of every position a row will hold: 0 its padding, 1 its tokens
    if bool(pads.any()):
        real = (torch.arange(width + max_new_tokens, device=device)[None, :] >= pads[:, None]).long()
    cache = model.new_cache(len(rows), min(limit, width + max_new_tokens)) if use_cache else None
    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    pos, step_input, finished = 0, tokens, False
    for _ in range(max_new_tokens):
        if tokens.shape[1] > limit or (cache is not None and tokens.shape[1] > cache.max_len):
            finished = True
        if sync is not None and sync(finished):
            break
        if finished:
            if sync is None:
                break
            model(tokens[:, :1])  # joins the other ranks' parameter gathers
            continue
        docs = None if real is None else Documents(real[:, : tokens.shape[1]])
        logits = model(step_input, cache=cache, pos=pos, docs=docs)[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        for i, t in enumerate(nxt[:, 0].tolist()):
            if not done[i]:
                out[i].append(t)
                done[i] = (eos_id is not None and t == eos_id) or (stop is not None and stop(i, out[i]))
        if all(done):
            finished = True
            if sync is None:
                break
            continue
        tokens = torch.cat([tokens, nxt], dim=1)
        if cache is not None:  # feed only the new tokens; the cache holds the rest
            pos, step_input = tokens.shape[1] - 1, nxt
        else:
            step_input = tokens
    return out
