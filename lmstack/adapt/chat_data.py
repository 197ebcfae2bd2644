"""Chat datasets users bring: for SFT, JSONL (or .jsonl.gz) or parquet rows with a `messages` list, the Hugging
Face chat format of Tulu 3's SFT mixture (roles system, user, assistant; any number of turns); for DPO,
rows with `chosen` and `rejected` message lists that share their prompt (UltraFeedback binarized: all but
the last, assistant, turn), or `prompt` (a string or a message list), `chosen` and `rejected` strings.

Every assistant turn is learned (its content and end marker), nothing else. A conversation longer than a
packed row is cut only between exchanges: trailing user/assistant exchanges are dropped until it fits (never
inside a turn), and one whose first assistant turn does not fit is skipped; `stage.max_turns` keeps at
most that many assistant turns. Both are counted. A row without an assistant turn has nothing to learn and
is skipped too; a row that is not a list of {role, content} messages is refused, naming its line. The
held-out split is by a hash of the row's `id` (else of its messages), so it does not move when rows are
added.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

from lmstack.tasks.chat_template import ROLES, message_lengths, with_system
from lmstack.tasks.verifiable import Example, Task

Messages = list[dict]


class ChatTask(Task):
    """A chat dataset's examples as a task: the model's answer to everything before an example's last
    assistant turn must be that turn (stripped of surrounding space)."""

    name = "chat"

    def __init__(self, examples: list[Example]):
        if not examples:
            raise ValueError("a chat task needs examples")
        self.examples = examples

    def sample(self, rng):
        return rng.choice(self.examples)

    def verify(self, response: str, ex: Example) -> float:
        return float(response.strip() == ex.answer.strip())


def last_turn_example(messages: Messages) -> Example:
    """The conversation as a held-out question: its prefix, and its last (assistant) turn as the answer."""
    return Example(ChatTask.name, messages[:-1], messages[-1]["content"])


def read_rows(path: str) -> list:
    """The rows of a .jsonl / .jsonl.gz or .parquet file (`lmstack.data.rows`), refused when it is missing."""
    from lmstack.data.rows import read_rows as rows_of

    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"stage.data={path}: no such file")
    return rows_of(path)


def messages_of(row, where: str) -> Messages:
    """A row's messages, checked: a list of {role in system/user/assistant, content: str}."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: needs a non-empty `messages` list (the Hugging Face chat format)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} needs a role in {ROLES} and string content, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def row_key(row: dict, content) -> str:
    """What the held-out split hashes: the row's id, else its content. Salted, so that a file whose rows
    were themselves chosen by the same hash of their ids (as a training split) still gets a held-out share."""
    return "stage.data:" + (str(row["id"]) if row.get("id") is not None else json.dumps(content, sort_keys=True))


def exchange_ends(messages: Messages) -> list[int]:
    """The lengths of the prefixes that end right after an assistant turn (the places a cut may fall)."""
    return [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]


def fit(tok, messages: Messages, width: int, max_turns: Optional[int]) -> tuple[Optional[Messages], str]:
    """The longest prefix ending after an assistant turn that fits `width` tokens (with at most `max_turns`
    assistant turns), and what happened: kept, truncated, too_long, or no_assistant."""
    ends = exchange_ends(messages)
    if not ends:
        return None, "no_assistant"
    outcome = "kept"
    if max_turns is not None and len(ends) > max_turns:
        ends, outcome = ends[:max_turns], "truncated"
    elif ends[-1] < len(messages):  # trailing turns after the last assistant turn teach nothing
        outcome = "truncated"
    lengths = message_lengths(tok, messages)
    for end in reversed(ends):
        if sum(lengths[:end]) <= width:
            return messages[:end], outcome if end == ends[-1] else "truncated"
    return None, "too_long"


def chat_conversations(
    path: str, tok, width: int, test_fraction: float, max_turns: Optional[int] = None, system: Optional[str] = None
) -> tuple[list[Messages], list[Messages], Counter]:
    """(train, held-out) conversations of a chat file, fitted to `width` tokens, and the counts of kept,
    truncated and skipped rows (too_long, no_assistant)."""
    from lmstack.data.sources import is_validation

    train, test, counts = [], [], Counter()
    for n, row in enumerate(read_rows(path), 1):
        messages = with_system(messages_of(row, f"{path} row {n}"), system)
        fitted, outcome = fit(tok, messages, width, max_turns)
        counts[outcome] += 1
        if fitted is not None:
            (test if is_validation(row_key(row, messages), test_fraction) else train).append(fitted)
    if not train:
        raise ValueError(f"stage.data={path}: no conversation to train on ({dict(counts)})")
    return train, test, counts


def preference_example(row, where: str) -> Example:
    """A preference row as an example whose answer is the chosen response and meta the rejected one."""
    chosen, rejected = (row.get(k) if isinstance(row, dict) else None for k in ("chosen", "rejected"))
    if isinstance(chosen, list) and isinstance(rejected, list):  # message lists sharing the prompt
        c, r = (
            messages_of({"messages": chosen}, f"{where} chosen"),
            messages_of({"messages": rejected}, f"{where} rejected"),
        )
        if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
            raise ValueError(f"{where}: chosen and rejected must each end with an assistant turn")
        if c[:-1] != r[:-1]:
            raise ValueError(f"{where}: chosen and rejected must share the prompt (every turn but their last)")
        prompt = c[:-1]
        if not prompt and isinstance(row.get("prompt"), str):  # the answers alone: the prompt as a string
            prompt = [{"role": "user", "content": row["prompt"]}]
        if not prompt:
            raise ValueError(f"{where}: no prompt (neither turns before the answers nor a `prompt` string)")
        return Example(ChatTask.name, prompt, c[-1]["content"], {"rejected": r[-1]["content"]})
    if isinstance(chosen, str) and isinstance(rejected, str) and isinstance(row.get("prompt"), (str, list)):
        p = row["prompt"]
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else messages_of({"messages": p}, where)
        return Example(ChatTask.name, prompt, chosen, {"rejected": rejected})
    raise ValueError(
        f"{where}: needs `chosen` and `rejected` message lists (UltraFeedback binarized) or `prompt`, `chosen` "
        "and `rejected` strings"
    )


def preference_examples(path: str, test_fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held-out) preference examples of a file, split by a hash of the row's id (else its prompt)."""
    from lmstack.data.sources import is_validation

    train, test = [], []
    for n, row in enumerate(read_rows(path), 1):
        ex = preference_example(row, f"{path} row {n}")
        (test if is_validation(row_key(row, ex.prompt), test_fraction) else train).append(ex)
    if not train:
        raise ValueError(f"stage.data={path}: no preference pair to train on")
    return train, test
