"""Running documents through curation steps, with the accounting of every document: the step runner that
`lmstack prepare` and the training-corpus cache share, and the sizes (bytes, tokens) it counts."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .readers import Document
from .stats import StageStats


class Sizer:
    """Bytes and, when counting tokens, tokens of a document's current text (cached on the document, so
    a document is tokenized once, and again only after a step rewrote its text)."""

    def __init__(self, tokenizer: str | None = None):
        self.tok = None
        if tokenizer:
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(os.path.expanduser(tokenizer))

    @classmethod
    def from_section(cls, cfg) -> "Sizer":
        """The sizer `prepare` (a PrepareSection) asks for: bytes, and tokens with `count_tokens`."""
        if not cfg.count_tokens:
            return cls()
        path = cfg.tokenize.tokenizer if cfg.tokenize is not None else None
        if not path:
            raise ValueError(
                "prepare.count_tokens=true counts every stage's tokens as documents flow, so it needs "
                "a tokenizer before the run: set tokenize.tokenizer=PATH/tokenizer.json"
            )
        if not Path(os.path.expanduser(path)).is_file():
            raise FileNotFoundError(f"prepare.tokenize.tokenizer={path}: no such file")
        return cls(path)

    def _measure(self, doc: Document) -> tuple[int, int | None]:
        tokens = len(self.tok.encode(doc.text, add_special_tokens=False).ids) if self.tok else None
        return len(doc.text.encode("utf-8", errors="replace")), tokens

    def __call__(self, doc: Document) -> tuple[int, int | None]:
        return doc.cached("size" if self.tok is None else "size+tokens", self._measure)


@dataclass
class StepResults:
    """The accounting of documents run through a list of steps (per rule, per stage), and its rejects."""

    rejects: list = field(default_factory=list)
    removed: list = field(default_factory=list)  # (rule, document); documents only with keep_removed
    counts: Counter = field(default_factory=Counter)  # rule -> documents removed
    stages: dict = field(default_factory=dict)
    docs_in: int = 0


def apply_steps(steps: list, docs, part: StepResults, keep_removed: bool, sizer: Sizer | None = None) -> list[Document]:
    """Run documents through steps; a document leaves at the first rule that removes it, or as a reject
    (with its file, line and the step's error) when a step fails on it."""
    sizer = sizer or Sizer()
    kept = []
    for doc in docs:
        for step in steps:
            st = part.stages.setdefault(step.name, StageStats(step.name))
            try:
                st.count_in(sizer(doc))
                rule = step(doc)
            except Exception as e:  # noqa: BLE001 - one document's failure must not stop the run
                part.rejects.append(vars(doc.reject(f"{step.name} failed: {type(e).__name__}: {e}")))
                break
            if rule:
                part.counts[f"{step.name}/{rule}"] += 1
                part.removed.append((f"{step.name}/{rule}", doc if keep_removed else None))
                break
            st.count_out(sizer(doc))  # measured again only if the step rewrote the text (C4, PII, paragraphs)
        else:
            kept.append(doc)
    return kept
