"""A suite of evals, loaded once and run many times: text sets scored in bits per byte, multiple-choice
tasks scored by ranked classification and generative tasks scored by exact match, each process scoring its
share and the sums reduced over ranks.

Configured as (the `evals` config group, see conf/evals/):

    sets:       {NAME: {jsonl: PATH or [PATHS], text_field: text, max_docs: N}
                 or {prepared: DIR, split: val}}
    tasks:      {NAME: {path: DIR holding requests.jsonl.gz, limit: N}}
    generative: {NAME: {task: arithmetic, examples: N, ...}}   (lmstack.eval.generative)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from lmstack.generate import ranks_done

from .bpb import blocks_from_prepared, blocks_from_texts, bpb_sums, read_jsonl_texts
from .generative import GenerativeTask, check_generative, generative_hits, load_generative
from .harness_tasks import check_harness
from .multiple_choice import Question, encode_question, load_requests, task_hits, task_metrics


@dataclass
class EvalSuite:
    sets: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    tasks: dict[str, tuple[list[Question], list]] = field(default_factory=dict)  # questions, encoded pairs
    generative: dict[str, GenerativeTask] = field(default_factory=dict)
    tok: object = None  # the tokenizer generative tasks decode with

    def __bool__(self) -> bool:
        return bool(self.sets or self.tasks or self.generative)

    def only(self, name: str) -> "EvalSuite":
        """The suite of one of its evals."""
        return EvalSuite(
            *({name: part[name]} if name in part else {} for part in (self.sets, self.tasks, self.generative)),
            tok=self.tok,
        )


def present(entries: Optional[dict]) -> dict:
    """A config's sets, tasks or generative tasks without those set to null (a sweep's way to leave one out:
    `tasks: {copycolors_10way: null}`)."""
    return {name: spec for name, spec in (entries or {}).items() if spec is not None}


def check_specs(
    sets: dict, tasks: dict, where: str = "evals", generative: Optional[dict] = None, harness: Optional[dict] = None
) -> None:
    """Raise ValueError naming the first malformed entry (before any data is read)."""
    sets, tasks, generative = present(sets), present(tasks), present(generative)
    for name, s in (sets or {}).items():
        if not isinstance(s, dict) or sum(bool(s.get(k)) for k in ("jsonl", "prepared")) != 1:
            raise ValueError(
                f"{where}.sets.{name} needs exactly one of `jsonl` (file or list of files) or "
                "`prepared` (a folder lmstack prepare wrote)"
            )
        extra = set(s) - {"jsonl", "text_field", "max_docs", "prepared", "split"}
        if extra:
            raise ValueError(f"{where}.sets.{name}: unknown key {sorted(extra)[0]!r}")
    for name, t in (tasks or {}).items():
        if not isinstance(t, (dict, str)) or (isinstance(t, dict) and not t.get("path")):
            raise ValueError(f"{where}.tasks.{name} needs `path`: a folder holding requests.jsonl.gz")
        extra = set(t) - {"path", "limit"} if isinstance(t, dict) else set()
        if extra:
            raise ValueError(f"{where}.tasks.{name}: unknown key {sorted(extra)[0]!r}")
    for name, g in (generative or {}).items():
        check_generative(name, g, where)
    if harness is not None:
        check_harness(harness, where)


def load_suite(
    sets: dict, tasks: dict, tok, tokenizer_json: str, seq_len: int, generative: Optional[dict] = None
) -> EvalSuite:
    """Read and tokenize every configured set and task; draw every generative task's prompts."""
    check_specs(sets, tasks, generative=generative)
    sets, tasks, generative = present(sets), present(tasks), present(generative)
    suite = EvalSuite(tok=tok)
    for name, s in (sets or {}).items():
        if s.get("prepared"):
            suite.sets[name] = blocks_from_prepared(s["prepared"], tokenizer_json, seq_len, s.get("split", "val"))
        else:
            texts = read_jsonl_texts(s["jsonl"], s.get("text_field", "text"), s.get("max_docs"))
            suite.sets[name] = blocks_from_texts(tok, texts, seq_len)
        if not suite.sets[name]:
            raise ValueError(f"eval set {name!r} holds no text")
    for name, t in (tasks or {}).items():
        t = {"path": t} if isinstance(t, str) else t
        questions = load_requests(os.path.expanduser(t["path"]))
        if t.get("limit"):
            questions = questions[: t["limit"]]  # the first N, so every run scores the same questions
        suite.tasks[name] = (questions, [encode_question(tok, q) for q in questions])
    for name, g in (generative or {}).items():
        suite.generative[name] = load_generative(name, g, tok)
    return suite


@torch.no_grad()
def evaluate(
    model,
    suite: EvalSuite,
    token_bytes: torch.Tensor,
    batch_size: int = 16,
    rank: int = 0,
    world: int = 1,
    reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> dict:
    """{name: {metric: value}}. Rank r scores items r, r + world, ...; every rank runs the same number of
    forward passes; `reduce` sums a tensor over ranks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, dict] = {}

    try:
        for name, blocks in suite.sets.items():
            most = max(len(blocks[r::world]) for r in range(world))
            sums = bpb_sums(model, blocks[rank::world], token_bytes, batch_size, math.ceil(most / batch_size))
            nats, tokens, nbytes = (reduce(sums) if reduce else sums).tolist()
            out[name] = {
                "bpb": nats / math.log(2) / max(nbytes, 1),
                "loss": nats / max(tokens, 1),
                "tokens": int(tokens),
            }
        for name, (questions, encoded) in suite.tasks.items():
            most = max(sum(len(e) for e in encoded[r::world]) for r in range(world))
            hits = task_hits(
                model, questions[rank::world], encoded[rank::world], batch_size, math.ceil(most / batch_size)
            )
            out[name] = task_metrics((reduce(hits.to(device)) if reduce else hits).tolist())
        for name, g in suite.generative.items():
            sync = ranks_done(reduce, device) if reduce else None
            hits = generative_hits(model, suite.tok, g, batch_size, rank, world, sync)
            score, n = (reduce(hits.to(device)) if reduce else hits).tolist()
            out[name] = {"exact_match": score / max(n, 1), "examples": int(n)}
    finally:
        model.train(was_training)
    return out


def flat_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    """`eval/<set>/bpb`, `eval/<task>/{acc,len_norm,bpb,correct_prob}`, `eval/<task>/exact_match` for the loggers;
    every metric of lm-eval's tasks (`results["harness"]`) but their document counts."""
    keep = ("bpb", "acc", "len_norm", "correct_prob", "exact_match")
    out = {
        f"{prefix}/{name}/{k}": v for name, r in results.items() if name != "harness" for k, v in r.items() if k in keep
    }
    for task, metrics in (results.get("harness") or {}).items():
        out.update({f"{prefix}/{task}/{k}": v for k, v in metrics.items() if k != "samples"})
    return out
