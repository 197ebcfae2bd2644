"""Verifiable tasks for adaptation: seeded generators of (prompt, reference answer) with exact verifiers.

- `arithmetic`: "What is 47 + 38?" -> "85" (digits and operators configurable);
- `reverse`, `sort`, `count`: string tasks on random lowercase words ("Reverse the word: lapm" -> "mpal",
  letters sorted, how many times a letter appears);
- `constraints`: instruction following checked by rule: lowercase only, an exact word count, or a given
  final phrase (the reference answer is one response that satisfies the rule).

Train and test splits are disjoint by construction: a prompt's split is decided by a hash of its text,
so no prompt of one split can be drawn for the other, whatever the seeds. Users add tasks with
`@lmstack.registry.register("task", NAME)` (a module of theirs loaded through `imports`) or from JSONL files
(`JsonlTask`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.registry import lookup, register

WORDS = (
    "apple river stone cloud garden window music forest paper candle silver harbor lantern meadow "
    "pencil rocket summer winter valley bridge castle dragon engine feather island jungle kettle ladder "
    "marble needle orange planet quartz saddle tunnel violin wagon yellow zebra anchor basket copper "
    "desert falcon glacier hammer igloo jacket kitten lemon mirror nickel oyster pepper rabbit tomato"
).split()
TOPICS = ("the sea", "a cat", "the moon", "rain", "a train", "the city", "bread", "a garden", "snow", "music")
PHRASES = ("the end", "thank you", "that is all", "good night")


@dataclass
class Example:
    task: str
    prompt: str
    answer: str  # the reference response (for SFT and as the verifier's key)
    meta: dict = field(default_factory=dict)


def split_of(prompt: str, test_fraction: float) -> str:
    """`test` for a fixed share of prompts chosen by a hash of the text, `train` for the rest."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def random_word(rng: random.Random, lo: int = 3, hi: int = 7) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def first_line(response: str) -> str:
    return response.strip().split("\n", 1)[0].strip()


class Task(ABC):
    name = "task"

    @abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """One example drawn with `rng` (prompts may repeat; `generate` keeps distinct ones)."""

    def verify(self, response: str, ex: Example) -> float:
        """1.0 when the response is right, else 0.0."""
        return float(first_line(response) == ex.answer)

    def generate(
        self, n: int, split: str = "train", seed: int = 0, test_fraction: float = 0.2, max_tries: int = 1000
    ) -> list[Example]:
        """n distinct examples of one split."""
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; allowed: train, test")
        rng, out, seen = random.Random(f"{self.name}/{seed}"), [], set()
        tries = 0
        while len(out) < n:
            ex = self.sample(rng)
            tries += 1
            if ex.prompt not in seen and split_of(ex.prompt, test_fraction) == split:
                seen.add(ex.prompt)
                out.append(ex)
                tries = 0
            elif tries > max_tries:
                raise ValueError(f"task {self.name}: only {len(out)} distinct {split} prompts found, {n} asked")
        return out


@register("task", "arithmetic")
class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, digits: int = 2, operators: str = "+-*"):
        bad = set(operators) - set("+-*")
        if bad or not operators or digits < 1:
            raise ValueError(f"arithmetic: digits >= 1 and operators from '+-*', got {digits}, {operators!r}")
        self.digits, self.operators = digits, operators

    def sample(self, rng):
        lo, hi = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10**self.digits - 1
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(self.operators)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        return Example(self.name, f"What is {a} {op} {b}?", str(value), {"a": a, "b": b, "op": op})

    def verify(self, response, ex):
        m = re.fullmatch(r"-?\d+", first_line(response))
        return float(m is not None and int(m.group()) == int(ex.answer))


@register("task", "reverse")
class Reverse(Task):
    name = "reverse"

    def sample(self, rng):
        w = random_word(rng)
        return Example(self.name, f"Reverse the word: {w}", w[::-1])


@register("task", "sort")
class SortLetters(Task):
    name = "sort"

    def sample(self, rng):
        w = random_word(rng)
        return Example(self.name, f"Sort the letters of: {w}", "".join(sorted(w)))


@register("task", "count")
class CountLetter(Task):
    name = "count"

    def sample(self, rng):
        w = random_word(rng, 4, 9)
        letter = rng.choice(sorted(set(w)) + [rng.choice(string.ascii_lowercase)])
        return Example(self.name, f"How many times does the letter {letter} appear in {w}?", str(w.count(letter)))


@register("task", "constraints")
class Constraints(Task):
    """Instruction constraints; the verifier checks the rule, not the reference text."""

    name = "constraints"

    def sample(self, rng):
        topic, kind = rng.choice(TOPICS), rng.choice(("lowercase", "words", "ends"))
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        if kind == "lowercase":
            return Example(
                self.name, f"Write about {topic} using only lowercase letters.", " ".join(words), {"kind": kind}
            )
        if kind == "words":
            return Example(
                self.name,
                f"Write exactly {len(words)} words about {topic}.",
                " ".join(words),
                {"kind": kind, "n": len(words)},
            )
        phrase = rng.choice(PHRASES)
        return Example(
            self.name,
            f"Write about {topic} and end with the phrase '{phrase}'.",
            " ".join(words[:3] + [phrase]),
            {"kind": kind, "phrase": phrase},
        )

    def verify(self, response, ex):
        text = first_line(response)
        if not re.search(r"[A-Za-z]", text):
            return 0.0
        kind = ex.meta["kind"]
        if kind == "lowercase":
            return float(text == text.lower())
        if kind == "words":
            return float(len(text.split()) == ex.meta["n"])
        return float(text.rstrip(" .!").endswith(ex.meta["phrase"]))


class JsonlTask(Task):
    """A user's examples: JSONL lines with `prompt` and `answer` (exact-match verifier) or `prompt`,
    `chosen`, `rejected` (preference pairs: `answer` is the chosen response)."""

    def __init__(self, path: str, name: str | None = None):
        self.path, self.name = Path(path), name or Path(path).name.split(".")[0]
        if not self.path.is_file():
            raise FileNotFoundError(f"no task file at {self.path}")
        self.examples = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            answer = row.get("answer", row.get("chosen"))
            if not isinstance(row.get("prompt"), str) or not isinstance(answer, str):
                raise ValueError(f"{self.path} line {n}: needs `prompt` and `answer` (or `chosen`/`rejected`)")
            self.examples.append(
                Example(self.name, row["prompt"], answer, {"rejected": row["rejected"]} if "rejected" in row else {})
            )
        if not self.examples:
            raise ValueError(f"{self.path} holds no examples")

    def sample(self, rng):
        return rng.choice(self.examples)


def make_task(name: str, **kwargs) -> Task:
    if name.endswith(".jsonl") or name.endswith(".json"):
        return JsonlTask(name, **kwargs)
    return lookup("task", name, "task")(**kwargs)
