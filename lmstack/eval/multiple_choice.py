"""Multiple-choice tasks scored by ranked classification, from OLMES request files.

A task folder holds `requests.jsonl.gz`: one line per (question, choice) with `doc_id`, `idx` (the choice)
and `request.context` / `request.continuation`. The format is read from the requests themselves, never from
a task's own doc fields: the gold index is the top-level `label` (else `doc.gold`); each choice is scored as
its own (context, continuation) pair, so a task that puts the choices in the context and scores one shared
continuation (partial scoring, as Winogrande does) scores each choice's context; the unconditional requests
OLMES adds for PMI scoring (another `doc_id` of the same `native_id` whose contexts are a bare `Answer:`)
are not questions and are left out. A request other than `loglikelihood` is refused, naming the type.

Each choice is scored by the sum of its continuation tokens' log-probabilities given its context. `acc`
picks the largest sum; `len_norm` the largest sum per character of the continuation (OLMES's per-character
normalisation). Two continuous metrics come from the same sums (DataDecide, arXiv 2504.11393): `bpb`, the
correct answer's bits per byte, and `correct_prob`, its probability normalised over the choices (a softmax of
the sums). Ties go to the lowest choice index (`argmax`'s first maximum), so a model that gives every
token the same probability picks the choice with the fewest tokens, the first of them on a tie.

Context and continuation are tokenized separately and joined (a trailing space of the context moves to
the continuation), as lm-evaluation-harness does; a sequence longer than the model's context keeps its
last tokens.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class Question:
    doc_id: int
    context: str  # the context of every choice (of choice 0 when `contexts` is set)
    gold: int
    choices: list[str] = field(default_factory=list)  # continuations, by choice index
    contexts: Optional[list[str]] = None  # partial scoring: one context per choice

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) of each choice."""
        return list(zip(self.contexts or [self.context] * len(self.choices), self.choices))


def _gold(r: dict, where: str) -> int:
    gold = r["label"] if isinstance(r.get("label"), int) else (r.get("doc") or {}).get("gold")
    if not isinstance(gold, int):
        raise ValueError(f"{where}: no gold choice (neither an integer `label` nor `doc.gold`)")
    return gold


def load_requests(path: str | Path) -> list[Question]:
    """Questions of a task folder (or a requests.jsonl.gz path), in doc_id order."""
    path = Path(path)
    if path.is_dir():
        path = path / "requests.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"no OLMES requests at {path}")
    by_doc: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            r = json.loads(line)
            kind = r.get("request_type", "loglikelihood")
            if kind != "loglikelihood":
                raise ValueError(
                    f"{path} line {n}: request_type {kind!r}; multiple choice needs loglikelihood (run a "
                    "generative task as an lm-evaluation-harness task: lmstack eval harness_tasks=...)"
                )
            q = by_doc.setdefault(r["doc_id"], {"native": r.get("native_id"), "pairs": {}})
            q["gold"] = _gold(r, f"{path} line {n}")
            q["pairs"][r["idx"]] = (r["request"]["context"], r["request"]["continuation"])
    questions = []
    for doc_id in _conditional(by_doc):
        pairs = [by_doc[doc_id]["pairs"][i] for i in sorted(by_doc[doc_id]["pairs"])]
        contexts = [c for c, _ in pairs]
        partial = len(set(contexts)) > 1
        q = Question(doc_id, contexts[0], by_doc[doc_id]["gold"], [c for _, c in pairs], contexts if partial else None)
        if not 0 <= q.gold < len(q.choices):
            raise ValueError(f"{path}: doc_id {doc_id} has gold {q.gold} but {len(q.choices)} choices")
        questions.append(q)
    return questions


def _conditional(by_doc: dict[int, dict]) -> list[int]:
    """The doc_ids that are questions, sorted: of several doc_ids sharing a native_id, the one with the
    longest contexts (the others are OLMES's unconditional requests)."""
    keep: dict = {}
    for doc_id, q in sorted(by_doc.items()):
        key = ("native", q["native"]) if q["native"] is not None else ("doc", doc_id)
        length = sum(len(c) for c, _ in q["pairs"].values())
        if key not in keep or length > keep[key][0]:
            keep[key] = (length, doc_id)
    return sorted(d for _, d in keep.values())


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    stripped = context.rstrip(" ")
    continuation = context[len(stripped) :] + continuation
    return tok.encode(stripped).ids if stripped else [], tok.encode(continuation).ids


def encode_question(tok, q: Question) -> list[tuple[list[int], list[int]]]:
    return [encode_pair(tok, context, c) for context, c in q.pairs()]


def continuation_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32, min_batches: int = 0
) -> list[float]:
    """Sum of log p(continuation token | everything before it) for each (context ids, continuation ids).
    Runs at least `min_batches` forward passes (ranks of a sharded model must run as many as each other)."""
    return [s for s, _ in continuation_scores(model, pairs, batch_size, min_batches)]


@torch.no_grad()
def continuation_scores(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32, min_batches: int = 0
) -> list[tuple[float, bool]]:
    """(sum of the continuation's log-probabilities, whether greedy decoding would write it) per pair, as
    lm-evaluation-harness's `loglikelihood` returns them."""
    max_len = model.cfg.max_seq_len + 1
    device = next(model.parameters()).device
    seqs_all = [(ctx + cont)[-max_len:] for ctx, cont in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(seqs_all[i]))  # longest first: little padding
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    n_batches = max(-(-len(pairs) // batch_size), min_batches)
    for b in range(n_batches):
        chunk = order[b * batch_size : (b + 1) * batch_size]
        seqs = [seqs_all[i] for i in chunk] or [[0, 0]]  # [[0, 0]]: a padding pass
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        logp = F.log_softmax(model(ids[:, :-1].to(device)).float(), dim=-1)
        targets = ids[:, 1:].to(device)
        picked = logp.gather(-1, targets[..., None]).squeeze(-1)
        greedy = logp.argmax(-1) == targets
        for row, (i, s) in enumerate(zip(chunk, seqs)):
            n = min(len(pairs[i][1]), len(s) - 1)
            span = slice(len(s) - 1 - n, len(s) - 1)
            out[i] = (float(picked[row, span].sum()), bool(greedy[row, span].all()))
    return out


def scored_bytes(q: Question, choice: int) -> int:
    """UTF-8 bytes of a choice's continuation as it is scored (with the context's trailing spaces, which
    `encode_pair` moves onto it)."""
    context, continuation = q.pairs()[choice]
    return max(len((context[len(context.rstrip(" ")) :] + continuation).encode()), 1)


# the sums `task_hits` returns, in order (summed over ranks before `task_metrics` divides by the questions)
HIT_SUMS = ("acc", "len_norm", "bpb", "correct_prob", "questions")


def task_hits(
    model,
    questions: list[Question],
    encoded: list[list[tuple[list[int], list[int]]]],
    batch_size: int = 32,
    min_batches: int = 0,
) -> torch.Tensor:
    """float64 sums over the questions, as HIT_SUMS names them: right by `acc`, right by `len_norm`, the
    correct answer's bits per byte, its probability normalised over the choices, and the questions scored.
    The two continuous ones come from the same forward passes as the accuracies."""
    pairs = [p for e in encoded for p in e]
    sums = continuation_logprobs(model, pairs, batch_size, min_batches)
    acc = norm = bpb = prob = 0.0
    first = 0
    for q in questions:
        s = torch.tensor(sums[first : first + len(q.choices)], dtype=torch.float64)
        first += len(q.choices)
        chars = torch.tensor([max(len(c), 1) for c in q.choices], dtype=torch.float64)
        acc += int(int(s.argmax()) == q.gold)
        norm += int(int((s / chars).argmax()) == q.gold)
        bpb += float(-s[q.gold]) / math.log(2) / scored_bytes(q, q.gold)
        prob += float(torch.softmax(s, 0)[q.gold])
    return torch.tensor([acc, norm, bpb, prob, len(questions)], dtype=torch.float64)


def task_metrics(sums: list[float]) -> dict:
    """Means over the questions of `task_hits`'s sums (over every rank's questions, once reduced): acc and
    len_norm (higher is better), bpb (the correct answer's bits per byte: lower is better) and correct_prob
    (DataDecide's continuous metrics, which separate small models long before accuracy does)."""
    n = sums[-1]
    return {**{k: v / max(n, 1) for k, v in zip(HIT_SUMS[:-1], sums[:-1])}, "questions": int(n)}


def score_task(model, tok, questions: list[Question], batch_size: int = 32) -> dict:
    """acc, len_norm, bpb and correct_prob over the questions (and how many there were)."""
    return task_metrics(task_hits(model, questions, [encode_question(tok, q) for q in questions], batch_size).tolist())
