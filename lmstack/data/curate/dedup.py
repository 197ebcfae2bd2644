"""Deduplication: exact (normalised text, URL), paragraph-level exact, and near-duplicate MinHash LSH.

MinHash runs as four stages that each take arrays and return arrays, so each can run per shard on any
number of machines with only the small arrays moving between them:
signatures (per document) -> band keys (per document) -> clusters (union-find over equal keys) ->
the documents to drop (all but the first of each cluster).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

import numpy as np
import xxhash

from lmstack.registry import register

from .readers import Document

_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: formatting differences are not content.
    (str.split and the regex class of whitespace agree on what it is; splitting is faster than a second regex.)"""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


@dataclass
class _FirstSeen:
    """Keeps the first document of each key and drops the later ones; subclasses define `key(doc)` (None:
    the document has no key and is kept) and `reason`."""

    seen: set = field(default_factory=set)

    def __call__(self, doc: Document) -> Optional[str]:
        key = doc.cached(self.name, self.key)  # a worker may have computed it already
        if key is None:
            return None
        if key in self.seen:
            return self.reason
        self.seen.add(key)
        return None


@register("dedup", "exact")
@dataclass
class ExactDedup(_FirstSeen):
    """Drops a document whose normalised text was seen before (64-bit xxhash)."""

    name: str = "exact_dedup"
    reason: str = "duplicate_text"

    def key(self, doc: Document) -> int:
        return xxhash.xxh64_intdigest(normalise(doc.text).encode())


@register("dedup", "url")
@dataclass
class UrlDedup(_FirstSeen):
    """Drops a document whose URL (scheme, `www.` and trailing slash ignored) was seen before."""

    name: str = "url_dedup"
    reason: str = "duplicate_url"

    def key(self, doc: Document) -> Optional[str]:
        url = doc.metadata.get("url") or (doc.id if "://" in doc.id else "")
        if not url:
            return None
        parts = urlsplit(url)
        return parts.netloc.lower().removeprefix("www.") + parts.path.rstrip("/") + "?" + parts.query


@register("dedup", "paragraph")
@dataclass
class ParagraphDedup:
    """Removes paragraphs (split on blank lines) seen before in any document, as Dolma's paragraph
    dedup does, but with an exact set of 64-bit hashes instead of a Bloom filter (no false positives).
    Paragraphs shorter than `min_chars` are left alone; a document left empty is dropped."""

    name: str = "paragraph_dedup"
    min_chars: int = 50
    seen: set = field(default_factory=set)

    def __call__(self, doc: Document) -> Optional[str]:
        kept = []
        for para in re.split(r"\n\s*\n", doc.text):
            if len(para.strip()) >= self.min_chars:
                key = xxhash.xxh64_intdigest(normalise(para).encode())
                if key in self.seen:
                    continue
                self.seen.add(key)
            kept.append(para)
        text = "\n\n".join(kept).strip()
        if not text:
            return "all_paragraphs_seen"
        doc.text = text
        return None


# ---- MinHash LSH, in stages ------------------------------------------------------------------------


def shingles(text: str, n: int = 5) -> list[str]:
    """Word n-grams of the normalised text (a shorter text is one shingle)."""
    words = normalise(text).split()
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def signatures(texts: list[str], num_perm: int = 112, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """Stage 1: MinHash signatures [N, num_perm] (uint64), computed by rensa's Rust MinHash."""
    from rensa import RMinHash

    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint64)
    matrix = RMinHash.digest_matrix_from_token_sets([shingles(t, ngram) for t in texts], num_perm=num_perm, seed=seed)
    return np.asarray(matrix.to_rows(), dtype=np.uint64)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Stage 2: one 64-bit key per band [N, bands]; two documents share a bucket when a key is equal."""
    if sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sigs.shape[1]} hashes; bands x rows needs {bands * rows}")
    keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    for b in range(bands):
        block = np.ascontiguousarray(sigs[:, b * rows : (b + 1) * rows])
        keys[:, b] = [xxhash.xxh64_intdigest(row.tobytes(), seed=b) for row in block]
    return keys


def clusters(keys: np.ndarray) -> np.ndarray:
    """Stage 3: union-find over documents sharing any band key; returns each document's root (the
    smallest index of its cluster)."""
    parent = np.arange(keys.shape[0])

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        col = keys[order, b]
        for j in np.flatnonzero(col[1:] == col[:-1]):
            ra, rb = find(order[j]), find(order[j + 1])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(len(parent))], dtype=np.int64)


def to_remove(roots: np.ndarray) -> np.ndarray:
    """Stage 4: indices of documents that are not the first of their cluster."""
    return np.flatnonzero(roots != np.arange(len(roots)))


def threshold(bands: int, rows: int) -> float:
    """The Jaccard similarity at which a pair is found with probability about 1/2: (1/b)^(1/r)."""
    return (1 / bands) ** (1 / rows)


@register("dedup", "minhash")
@dataclass
class MinHashDedup:
    """Near-duplicate removal over a whole collection (datatrove's defaults: word 5-grams, 14 bands x 8
    rows, so pairs above Jaccard ~0.72 are found). With `jaccard`, the bands only propose candidates and
    each pair's true Jaccard decides: looser bands (28 x 4 finds a pair at 0.6 with probability 0.97) then
    find more copies without removing distinct documents."""

    name: str = "minhash_dedup"
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    jaccard: Optional[float] = None  # set: a candidate pair is a duplicate only at this true Jaccard or above

    def __post_init__(self):
        if self.jaccard is not None and not 0 < self.jaccard <= 1:
            raise ValueError(f"prepare.dedup.minhash.jaccard={self.jaccard} must be in (0, 1]")

    def band_keys(self, texts: list[str]) -> np.ndarray:
        """Stages 1 and 2 for some documents: what a worker computes for its share."""
        return band_keys(signatures(texts, self.bands * self.rows, self.ngram, self.seed), self.bands, self.rows)

    def duplicates(self, texts: list[str]) -> np.ndarray:
        return to_remove(clusters(self.band_keys(texts)))
