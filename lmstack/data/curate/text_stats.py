"""Word, line and paragraph splits shared by the filters, computed once per text.

Words come from a regular expression (runs of word characters, or runs of other non-space characters),
close to NLTK's word_tokenize on English but about 100x faster; the filters' thresholds are the
anchors' (datatrove), so decisions agree on almost every document (see benchmarks/prepare_throughput.py).
"""

from __future__ import annotations

import re
from functools import lru_cache

WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
ALNUM_WORD_RE = re.compile(r"\w+(?:['’]\w+)*")  # the words of WORD_RE without its punctuation tokens
NO_LETTER_RE = re.compile(r"(?:^|(?<= ))[\d_'’]+(?= |$)")
PARAGRAPH_RE = re.compile(r"\n{2,}")


@lru_cache(maxsize=8)
def words(text: str) -> tuple[str, ...]:
    return tuple(WORD_RE.findall(text))


@lru_cache(maxsize=8)
def alnum_words(text: str) -> tuple[str, ...]:
    """The words that hold a letter or a digit (punctuation runs and bare underscores left out)."""
    ws = ALNUM_WORD_RE.findall(text)
    if "_" in text:
        ws = [w for w in ws if w.strip("_'’")]
    return tuple(ws)


def count_without_letters(ws) -> int:
    """How many words hold no letter (decimal digits, underscores and apostrophes only). A word of other
    numeric characters ('½', '²') counts as holding a letter: one word in about 10,000 on real text."""
    return len(NO_LETTER_RE.findall(" ".join(ws)))


def duplicates(items) -> tuple[int, int]:
    """(number of repeated elements, characters in them): every occurrence after the first counts."""
    seen, n, chars = set(), 0, 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars
