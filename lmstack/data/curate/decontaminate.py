"""Decontamination: a training document that shares a long word n-gram with an eval item goes (GPT-3's 13-gram
overlap, as datatrove's `pipeline/decont`), as the rule `decontamination/<task>`.

Both sides are normalised the same way before they are compared: lowercase word sequences (`\\w+` runs:
punctuation and spacing never matter) without the prompt's template words. An eval item is its question with
the right answer: for OLMES request files, each question's gold context and continuation (as the
multiple-choice scorer reads them). The template is what a leak may or may not carry: the labels that start a
line in at least 90% of a task's prompts (`Question:`, `Answer:`, `Goal:`), the words that start or end at
least 90% of its contexts, and the labels a pasted item usually has (`Choices:`, `Options:`); these words are
dropped wherever they appear, in the items and in the documents, so `Question: Q Answer: A` lines up with Q A.
An item of at least `ngram` words contributes every `ngram`-gram; a shorter one of at least `min_words` words
is matched whole, and so is a question alone from `min_words` words up when it is shorter than `ngram` (a leak
that lists the choices gives the answer as a letter); shorter still cannot be told from chance and is only
counted (GPT-3 lowered N for short tasks the same way). N-grams are hashed with xxhash (64 bits, the same in
every process) and looked up with numpy, so a document costs one pass over its words per n-gram length.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..rows import iter_rows
from .readers import Document

WORD = re.compile(r"\w+")
PRIME = np.uint64(1_099_511_628_211)  # FNV's 64-bit prime, for the rolling n-gram hash
TEMPLATE_SHARE = 0.9  # a start or end word at least this common among a task's contexts is the template
LABEL = re.compile(r"^([A-Z][a-z]*):", re.M)  # a prompt's line label: `Question:`, `Answer:`, `Goal:`
LEAK_LABELS = frozenset({"question", "answer", "choices", "options"})  # what a pasted item is labelled with


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_hashes(ws: list[str]) -> np.ndarray:
    import xxhash

    return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in ws), dtype=np.uint64, count=len(ws))


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
    """The hash of every run of n consecutive word hashes (uint64 arithmetic wraps, as intended)."""
    if len(h) < n:
        return np.zeros(0, dtype=np.uint64)
    out = h[: len(h) - n + 1].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            out = out * PRIME + h[k : len(h) - n + 1 + k]
    return out


def task_name(path: str) -> str:
    """A task folder's name, or a requests file's folder, or a JSONL file's name without its suffixes."""
    p = Path(path)
    if p.is_dir() or p.name.startswith("requests.jsonl"):
        return (p if p.is_dir() else p.parent).name
    return p.name.split(".")[0]


def _strip_template(items: list[list[str]]) -> tuple[list[list[str]], set[str]]:
    """Take off the leading and trailing words that (nearly) every item shares, the prompt's template, and
    say which they were."""
    template: set[str] = set()
    for end in (0, -1):
        while items and all(items):
            first = [ws[end] for ws in items]
            common = max(set(first), key=first.count)
            if first.count(common) < TEMPLATE_SHARE * len(items):
                break
            template.add(common)
            items = [(ws[1:] if end == 0 else ws[:-1]) if ws[end] == common else ws for ws in items]
    return items, template


Items = list[tuple[str, list[str], list[str]]]  # (item id, question words, answer words)


def _question_items(path: Path) -> tuple[Items, set[str]]:
    """OLMES requests as questions (`lmstack.eval.multiple_choice.load_requests`: unconditional requests
    left out), each its gold choice's context and continuation, and the template words of their prompts."""
    from lmstack.eval.multiple_choice import load_requests

    questions = load_requests(path)
    golds = [q.pairs()[q.gold] for q in questions]
    found = [{m.lower() for m in LABEL.findall(context)} for context, _ in golds]
    labels = {w for w in set().union(*found) if sum(w in f for f in found) >= TEMPLATE_SHARE * len(found)}
    contexts, template = _strip_template([words(LABEL.sub(" ", context)) for context, _ in golds])
    items = [(str(q.doc_id), c, words(answer)) for q, c, (_, answer) in zip(questions, contexts, golds)]
    return items, labels | template


def eval_items(path: str) -> Items:
    """(item id, question words, answer words) of one eval set, without its prompt's template."""
    return eval_set(path)[0]


def eval_set(path: str) -> tuple[Items, set[str]]:
    """The items of one eval set and its template words: OLMES requests (a task folder or its
    requests.jsonl.gz) or a JSONL file (rows' `text`, else their string fields; no separate answer, no
    template)."""
    p = Path(os.path.expanduser(path))
    requests = p / "requests.jsonl.gz" if p.is_dir() else p
    if not requests.is_file():
        raise FileNotFoundError(f"prepare.decontaminate.tasks: {path} is neither a task folder nor a file")
    if requests.name.startswith("requests.jsonl"):
        return _question_items(requests)
    out = []
    for n, row in iter_rows(str(requests)):
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: an eval item must be a JSON object")
        text = row.get("text")
        if not isinstance(text, str):
            text = " ".join(v for k, v in row.items() if isinstance(v, str) and k != "id")
        out.append((str(row.get("id", n)), words(text), []))
    return out, set()


class EvalNgrams:
    """The n-grams of a list of eval sets, for looking documents up against them."""

    def __init__(self, tasks: list[str], ngram: int = 13, min_words: int = 8):
        if not 1 <= min_words <= ngram:
            raise ValueError(f"prepare.decontaminate: need 1 <= min_words ({min_words}) <= ngram ({ngram})")
        self.names = [task_name(t) for t in tasks]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"prepare.decontaminate.tasks: two eval sets share a name: {self.names}")
        self.summary: dict[str, dict] = {}
        sets = [eval_set(path) for path in tasks]
        self.template = frozenset(LEAK_LABELS.union(*(template for _, template in sets)))
        table: dict[int, dict[int, tuple[int, str]]] = {}  # n -> hash -> (task index, item id)
        for t, (path, (items, _)) in enumerate(zip(tasks, sets)):
            short = 0
            for item_id, question, answer in items:
                question = self.normal(question)
                ws = question + self.normal(answer)
                if len(ws) < min_words:
                    short += 1
                    continue
                alone = [question] if min_words <= len(question) < min(ngram, len(ws)) else []
                for seq in (ws, *alone):
                    n = min(ngram, len(seq))
                    for hsh in ngram_hashes(word_hashes(seq), n).tolist():
                        table.setdefault(n, {}).setdefault(hsh, (t, item_id))
            self.summary[self.names[t]] = {"items": len(items), "too_short": short, "path": str(path)}
        self.lengths = sorted(table)
        self.sorted = {n: np.array(sorted(table[n]), dtype=np.uint64) for n in self.lengths}
        self.owner = table

    def normal(self, ws: list[str]) -> list[str]:
        """Words without the template's: how both sides are compared."""
        return [w for w in ws if w not in self.template]

    def find(self, text: str) -> Optional[dict]:
        """The first eval item the text shares an n-gram with: {task, item, ngram} (None: clean)."""
        return next(self.matches(text), None)

    def matches(self, text: str):
        """Every (task, item) the text shares an n-gram with, once each, with the first such n-gram as the
        text has it (template words in it included)."""
        every = words(text)
        at_word = [k for k, w in enumerate(every) if w not in self.template]
        ws = [every[k] for k in at_word]
        if not ws or not self.lengths:
            return
        h, seen = word_hashes(ws), set()
        for n in self.lengths:
            grams, known = ngram_hashes(h, n), self.sorted[n]
            if not len(grams):
                continue
            at = np.searchsorted(known, grams).clip(max=len(known) - 1)
            for i in np.nonzero(known[at] == grams)[0].tolist():
                t, item = self.owner[n][int(grams[i])]
                if (t, item) not in seen:
                    seen.add((t, item))
                    span = every[at_word[i] : at_word[i + n - 1] + 1]
                    yield {"task": self.names[t], "item": item, "ngram": " ".join(span)}


def overlap(texts, table: EvalNgrams, examples: int = 3) -> dict:
    """Per eval set: the documents of `texts` ((id, text) pairs) that share an n-gram with it, the eval items
    found in them, and the first few matches; the corpus is only read."""
    report = {
        name: {**info, "documents": 0, "items_found": set(), "examples": []} for name, info in table.summary.items()
    }
    docs = 0
    for doc_id, text in texts:
        docs += 1
        hit: set[str] = set()
        for m in table.matches(text):
            r = report[m["task"]]
            r["items_found"].add(m["item"])
            if m["task"] not in hit:
                hit.add(m["task"])
                r["documents"] += 1
                if len(r["examples"]) < examples:
                    r["examples"].append({"document": doc_id, **m})
    for r in report.values():
        r["items_found"] = len(r["items_found"])
    return {"documents": docs, "tasks": report}


@lru_cache(maxsize=2)
def eval_ngrams(tasks: tuple[str, ...], ngram: int, min_words: int) -> EvalNgrams:
    """One table per process for the same eval sets (every read task builds its own steps)."""
    return EvalNgrams(list(tasks), ngram, min_words)


@dataclass
class Decontaminate:
    """A filter step: a document sharing an n-gram with an eval set is removed as `decontamination/<task>`,
    and the match (task, item id, the n-gram) is kept with it for `removed/`."""

    tasks: list = field(default_factory=list)
    ngram: int = 13
    min_words: int = 8
    name: str = "decontamination"

    def __post_init__(self):
        self.table = eval_ngrams(tuple(str(t) for t in self.tasks), self.ngram, self.min_words)

    def __call__(self, doc: Document) -> Optional[str]:
        match = self.table.find(doc.text)
        if match is None:
            return None
        doc.metadata["decontamination"] = match
        return match["task"]
