"""Near-duplicate recall and safety of MinHash, with and without the verification stage, on real documents.

Planted copies of real documents (../shared/data's web and prose) with 1-5% of their words replaced are the
duplicates to find; the real documents themselves are the distinct ones, of which none should go unless its
true Jaccard (word 5-grams) with the document it is joined to is at least 0.6. The stages are the pipeline's
own (band keys, bucket edges, verification, components), over all documents in one process.

    python benchmarks/near_duplicates.py --copies 1000
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from pathlib import Path

import numpy as np

from lmstack.data.curate.dedup import MinHashDedup, threshold
from lmstack.data.curate.near_dups import components_removed, jaccard
from lmstack.data.curate.partitions import bucket_edges

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus(copies: int, seed: int = 0) -> tuple[list[str], dict[int, tuple[int, float]]]:
    """Real documents, then `copies` planted copies: index -> (original, share of words replaced)."""
    texts = []
    for path in sorted((SHARED / "web").glob("*.json*.gz")) + sorted((SHARED / "prose").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            texts += [json.loads(line)["text"] for line in f]
    texts = [t for t in dict.fromkeys(texts) if len(t.split()) >= 50]  # distinct, long enough to have 5-grams
    rng, planted = random.Random(seed), {}
    vocab = sorted({w for t in texts[:200] for w in t.split()})
    for _ in range(copies):
        src, share = rng.randrange(len(texts)), rng.uniform(0.01, 0.05)
        words = texts[src].split(" ")
        for i in rng.sample(range(len(words)), max(1, round(share * len(words)))):
            words[i] = rng.choice(vocab)
        planted[len(texts)] = (src, share)
        texts.append(" ".join(words))
    return texts, planted


def run(texts: list[str], mh: MinHashDedup) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Removed documents, the pairs joined, the candidate pairs, CPU seconds."""
    t0 = time.process_time()
    keys = mh.band_keys(texts)
    n = len(texts)
    g = {"keys": keys.reshape(-1), "band": np.tile(np.arange(mh.bands), n), "pos": np.repeat(np.arange(n), mh.bands)}
    edges = bucket_edges(g)
    candidates = len(edges)
    if mh.jaccard is not None:
        ok = [jaccard(texts[a], texts[b], mh.ngram) >= mh.jaccard for a, b in edges.tolist()]
        edges = edges[np.asarray(ok, dtype=bool)] if len(edges) else edges
    return components_removed(edges), edges, candidates, time.process_time() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=1000)
    args = p.parse_args()
    texts, planted = corpus(args.copies)
    real = len(texts) - len(planted)
    print(f"{real:,} distinct real documents, {len(planted):,} planted copies with 1-5% of words replaced")
    true_j = np.array([jaccard(texts[i], texts[s], 5) for i, (s, _) in planted.items()])
    print(f"true Jaccard of the planted pairs: min {true_j.min():.3f}, median {np.median(true_j):.3f}")
    head = f"{'setting':<32}{'recall':>8}{'candidates':>12}{'joined, J<0.6':>15}{'real removed':>14}{'lowest J':>10}"
    print(f"\n{head}{'CPU s':>7}")
    for name, mh in (
        ("14 x 8 bands (threshold 0.72)", MinHashDedup()),
        ("28 x 4 bands (threshold 0.43)", MinHashDedup(bands=28, rows=4)),
        ("20 x 5 bands (threshold 0.55)", MinHashDedup(bands=20, rows=5)),
        ("28 x 4 bands + Jaccard >= 0.6", MinHashDedup(bands=28, rows=4, jaccard=0.6)),
        ("20 x 5 bands + Jaccard >= 0.6", MinHashDedup(bands=20, rows=5, jaccard=0.6)),
    ):
        removed, edges, candidates, cpu = run(texts, mh)
        low = sum(jaccard(texts[a], texts[b], 5) < 0.6 for a, b in edges.tolist())
        gone = set(removed.tolist())
        # a planted copy comes after its original, so the copy is the one that goes when the pair is found
        found = sum(i in gone for i in planted)
        real_gone = [i for i in gone if i < real]
        partners = {}
        for a, b in edges.tolist():
            partners.setdefault(a, []).append(b), partners.setdefault(b, []).append(a)
        lowest = min(
            (max(jaccard(texts[i], texts[j], 5) for j in partners[i]) for i in real_gone if i in partners),
            default=float("nan"),
        )
        print(
            f"{name:<32}{found / len(planted):>8.3f}{candidates:>12,}{low:>15,}{len(real_gone):>14,}"
            f"{lowest:>10.3f}{cpu:>7.1f}"
        )
    print(f"\n(LSH thresholds: 14x8 {threshold(14, 8):.2f}, 20x5 {threshold(20, 5):.2f}, 28x4 {threshold(28, 4):.2f})")


if __name__ == "__main__":
    main()
