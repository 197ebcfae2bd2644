"""From MinHash candidate pairs to the documents that go: optional verification of each pair by its true
Jaccard similarity of word n-grams (so that looser bands can find more copies without removing distinct
documents), then connected components over the pairs, keeping the first document (in input order) of each.

The pairs are few (only documents that share a bucket), so one process joins them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dedup import normalise
from .stage_documents import read_some

VERIFY_PAIRS_PER_TASK = 20_000  # at most; fewer, so that every worker has some


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """The distinct word n-grams of `shingles` as sorted 64-bit hashes (a polynomial over the words' hashes:
    equal n-grams hash alike; distinct ones collide with probability ~2^-64). Python's string hash is salted
    per process, so hashes compare only within one process, as a verification task does."""
    words = normalise(text).split()
    if len(words) <= ngram:
        return np.array([hash(" ".join(words))], dtype=np.int64).view(np.uint64)
    w = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    n = len(words) - ngram + 1
    h = np.zeros(n, dtype=np.uint64)
    for k in range(ngram):
        h = h * np.uint64(1099511628211) + w[k : k + n]  # wraps modulo 2^64
    return np.unique(h)


def jaccard(a: str, b: str, ngram: int) -> float:
    """True Jaccard similarity of the two texts' word n-gram sets."""
    return _jaccard(shingle_hashes(a, ngram), shingle_hashes(b, ngram))


def _jaccard(x: np.ndarray, y: np.ndarray) -> float:
    both = len(np.intersect1d(x, y, assume_unique=True))
    return both / max(len(x) + len(y) - both, 1)


def verify_pairs(job: dict) -> np.ndarray:
    """The pairs (positions) whose true Jaccard is at least the threshold; documents read from the folders of
    the stage before MinHash (random access)."""
    pairs, folders = np.asarray(job["pairs"], dtype=np.int64).reshape(-1, 2), job["folders"]
    texts: dict[int, str] = {}
    wanted = np.unique(pairs)
    tasks = wanted >> 32
    for t in np.unique(tasks).tolist():
        local = wanted[tasks == t] - (t << 32)
        texts.update({(t << 32) + i: s for i, s in read_some(Path(folders[t]), local).items()})
    sets: dict[int, np.ndarray] = {}  # a document's shingles, once (the first of a bucket is in many pairs)

    def of(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = shingle_hashes(texts[i], job["ngram"])
        return sets[i]

    keep = [_jaccard(of(a), of(b)) >= job["threshold"] for a, b in pairs.tolist()]
    return pairs[np.asarray(keep, dtype=bool)] if len(pairs) else pairs


def components_removed(edges: np.ndarray) -> np.ndarray:
    """Positions that are not the smallest of their connected component, sorted (min-label propagation with
    pointer jumping over the edge list)."""
    if not len(edges):
        return np.zeros(0, np.int64)
    nodes, inv = np.unique(edges, return_inverse=True)
    a, b = inv.reshape(-1, 2).T
    label = np.arange(len(nodes))
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]  # jump: a node takes its label's label
        if np.array_equal(new, label):
            break
        label = new
    return np.sort(nodes[label != np.arange(len(nodes))])
