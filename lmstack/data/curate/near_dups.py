"""From MinHash candidate pairs to the documents that go: optional verification of each pair by its true
Jaccard similarity of word n-grams (so that looser bands can find more copies without removing distinct
documents), then connected components over the pairs, keeping the first document (in input order) of each.

The pairs are few (only documents that share a bucket), so one process joins them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dedup import shingles
from .docstore import read_some

VERIFY_PAIRS_PER_TASK = 20_000


def jaccard(a: str, b: str, ngram: int) -> float:
    x, y = set(shingles(a, ngram)), set(shingles(b, ngram))
    return len(x & y) / max(len(x | y), 1)


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
    keep = [jaccard(texts[a], texts[b], job["ngram"]) >= job["threshold"] for a, b in pairs.tolist()]
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
