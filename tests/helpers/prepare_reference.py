"""`lmstack prepare`'s decisions computed the plain way, in one process with everything in memory: the filters
and the streaming dedup steps over the documents in input order (each remembering every key it saw), then
MinHash clusters over all band keys at once. The distributed pipeline must keep exactly these documents."""

from __future__ import annotations

from lmstack.data.curate.build import build_dedup, build_filters, minhash_step
from lmstack.data.curate.dedup import clusters, to_remove
from lmstack.data.curate.readers import Document, expand_inputs, read_inputs
from lmstack.data.curate.steps import StepResults, apply_steps


def reference_prepare(inputs: list[str], cfg: dict) -> tuple[list[tuple[str, str]], dict]:
    """(id, text) of the kept documents, in order, and the documents removed per rule."""
    docs = [
        d
        for d in read_inputs(expand_inputs(inputs), cfg["source"], cfg["text_field"], cfg["max_doc_bytes"])
        if isinstance(d, Document)
    ]
    part = StepResults()
    kept = apply_steps(build_filters(cfg), docs, part, False)
    kept = apply_steps(build_dedup(cfg), kept, part, False)
    mh = minhash_step(cfg)
    if mh and kept:
        drop = set(to_remove(clusters(mh.band_keys([d.text for d in kept]))).tolist())
        part.counts["minhash_dedup/near_duplicate"] += len(drop)
        kept = [d for i, d in enumerate(kept) if i not in drop]
    return [(d.id, d.text) for d in kept], dict(part.counts)
