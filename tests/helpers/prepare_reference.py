"""`lmstack prepare`'s decisions computed the plain way, in one process with everything in memory: the filters
and the streaming dedup steps over the documents in input order (each remembering every key it saw), then
MinHash clusters over all band keys at once. The distributed pipeline must keep exactly these documents."""

from __future__ import annotations

from lmstack.data.curate.build import build_dedup, build_filters, minhash_step
from lmstack.data.curate.dedup import clusters, to_remove
from lmstack.data.curate.inputs import expand_inputs
from lmstack.data.curate.pipeline import check_config
from lmstack.data.curate.readers import Document, read_inputs
from lmstack.data.curate.steps import StepResults, apply_steps


def reference_prepare(inputs: list[str], cfg: dict) -> tuple[list[tuple[str, str]], dict]:
    """(id, text) of the kept documents, in order, and the documents removed per rule."""
    cfg = check_config(cfg)
    docs = [
        d
        for d in read_inputs(expand_inputs(inputs), cfg.source, cfg.text_field, cfg.max_doc_bytes)
        if isinstance(d, Document)
    ]
    part = StepResults()
    kept = apply_steps(build_filters(cfg), docs, part, False)
    kept = apply_steps(build_dedup(cfg), kept, part, False)
    mh = minhash_step(cfg)
    if mh and kept:
        keys = mh.band_keys([d.text for d in kept])
        if mh.jaccard is None:
            drop = set(to_remove(clusters(keys)).tolist())
        else:
            drop = _verified_duplicates(keys, [d.text for d in kept], mh)
        part.counts["minhash_dedup/near_duplicate"] += len(drop)
        kept = [d for i, d in enumerate(kept) if i not in drop]
    return [(d.id, d.text) for d in kept], dict(part.counts)


def _verified_duplicates(keys, texts: list[str], mh) -> set[int]:
    """Per bucket, the first document paired with each other one; pairs at true Jaccard >= mh.jaccard joined
    (union-find over a dict); all but the first document of each group go."""
    from lmstack.data.curate.dedup import shingles

    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    for b in range(keys.shape[1]):
        first: dict[int, int] = {}
        for i, k in enumerate(keys[:, b].tolist()):
            if k not in first:
                first[k] = i
                continue
            a, x, y = first[k], set(shingles(texts[first[k]], mh.ngram)), set(shingles(texts[i], mh.ngram))
            if len(x & y) / len(x | y) >= mh.jaccard:
                ra, ri = find(a), find(i)
                parent[max(ra, ri)] = min(ra, ri)
    return {i for i in range(len(texts)) if find(i) != i}
