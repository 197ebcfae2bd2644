"""Multiple-choice tasks scored by ranked classification, from OLMES request files.

A task folder holds `requests.jsonl.gz`: one line per (question, choice) with `doc_id`, `idx` (the choice),
`request.context`, `request.continuation` and `doc.gold`. Each choice is scored by the sum of its
continuation tokens' log-probabilities given the context. `acc` picks the largest sum; `len_norm` the
largest sum per character of the continuation (OLMES's per-character normalisation). Ties go to the
lowest choice index (`argmax`'s first maximum), so a model that gives every token the same probability
picks the choice with the fewest tokens, the first of them on a tie.

Context and continuation are tokenized separately and joined (a trailing space of the context moves to
the continuation), as lm-evaluation-harness does; a sequence longer than the model's context keeps its
last tokens.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Question:
    doc_id: int
    context: str
    gold: int
    choices: list[str] = field(default_factory=list)  # continuations, by choice index


def load_requests(path: str | Path) -> list[Question]:
    """Questions of a task folder (or a requests.jsonl.gz path), in doc_id order."""
    path = Path(path)
    if path.is_dir():
        path = path / "requests.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"no OLMES requests at {path}")
    by_doc: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            q = by_doc.setdefault(
                r["doc_id"], {"context": r["request"]["context"], "gold": r["doc"]["gold"], "choices": {}}
            )
            q["choices"][r["idx"]] = r["request"]["continuation"]
    return [
        Question(d, q["context"], q["gold"], [q["choices"][i] for i in sorted(q["choices"])])
        for d, q in sorted(by_doc.items())
    ]


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    stripped = context.rstrip(" ")
    continuation = context[len(stripped) :] + continuation
    return tok.encode(stripped).ids if stripped else [], tok.encode(continuation).ids


def encode_question(tok, q: Question) -> list[tuple[list[int], list[int]]]:
    return [encode_pair(tok, q.context, c) for c in q.choices]


@torch.no_grad()
def continuation_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32, min_batches: int = 0
) -> list[float]:
    """Sum of log p(continuation token | everything before it) for each (context ids, continuation ids).
    Runs at least `min_batches` forward passes (ranks of a sharded model must run as many as each other)."""
    max_len = model.cfg.max_seq_len + 1
    device = next(model.parameters()).device
    out = []
    n_batches = max(-(-len(pairs) // batch_size), min_batches)
    for b in range(n_batches):
        chunk = pairs[b * batch_size : (b + 1) * batch_size]
        seqs = [(ctx + cont)[-max_len:] for ctx, cont in chunk] or [[0, 0]]  # [[0, 0]]: a padding pass
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        logp = F.log_softmax(model(ids[:, :-1].to(device)).float(), dim=-1)
        targets = ids[:, 1:].to(device)
        picked = logp.gather(-1, targets[..., None]).squeeze(-1)
        for i, ((_, cont), s) in enumerate(zip(chunk, seqs)):
            n = min(len(cont), len(s) - 1)
            out.append(float(picked[i, len(s) - 1 - n : len(s) - 1].sum()))
    return out


def task_hits(
    model,
    questions: list[Question],
    encoded: list[list[tuple[list[int], list[int]]]],
    batch_size: int = 32,
    min_batches: int = 0,
) -> torch.Tensor:
    """float64 [3]: questions right by `acc`, right by `len_norm`, and questions scored."""
    pairs = [p for e in encoded for p in e]
    sums = continuation_logprobs(model, pairs, batch_size, min_batches)
    acc = norm = 0
    first = 0
    for q in questions:
        s = torch.tensor(sums[first : first + len(q.choices)])
        first += len(q.choices)
        chars = torch.tensor([max(len(c), 1) for c in q.choices], dtype=torch.float)
        acc += int(int(s.argmax()) == q.gold)
        norm += int(int((s / chars).argmax()) == q.gold)
    return torch.tensor([acc, norm, len(questions)], dtype=torch.float64)


def score_task(model, tok, questions: list[Question], batch_size: int = 32) -> dict:
    """acc and len_norm over the questions (and how many there were)."""
    acc, norm, n = task_hits(model, questions, [encode_question(tok, q) for q in questions], batch_size).tolist()
    return {"acc": acc / max(n, 1), "len_norm": norm / max(n, 1), "questions": int(n)}
