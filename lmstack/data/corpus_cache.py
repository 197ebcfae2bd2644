"""The training-corpus cache: configured sources (`data_mix`) tokenized once into the corpus format
(`corpus_format`), in a folder of the cache named by a hash of everything that affects it.

Configured sources go through the curation pipeline's exact dedup; the full pipeline (filters, MinHash)
is `lmstack prepare`, whose output trains with `data_mix=prepared`. The folder is claimed through
`lmstack.ownership`; other processes asking for the same corpus wait for it, then reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .corpus_format import PreparedCorpus, tokenize_stage, tokenizer_digest, write_corpus
from .curate.dedup import ExactDedup
from .curate.readers import Document
from .curate.stats import Accounting
from .curate.steps import StepResults, apply_steps
from .sources import read_source, source_files, source_fingerprint

log = logging.getLogger(__name__)
PREP_VERSION = 4  # 2: exact dedup and stats.json; 3: file sources read by the curation readers; 4: token counts


def corpus_key(sources: list[dict], tokenizer_cfg: dict, seq_len: int, val_fraction: float) -> str:
    spec = {
        "v": PREP_VERSION,
        "sources": [{**s, "fingerprint": source_fingerprint(s.get("builtin"), s.get("paths"))} for s in sources],
        "tokenizer": tokenizer_cfg,
        "seq_len": seq_len,
        "val_fraction": val_fraction,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _exact_dedup(docs: list[dict], acct: Accounting) -> list[dict]:
    """The curation pipeline's exact dedup on a configured source, counted in the corpus's stats.json."""
    results = StepResults()
    kept = apply_steps([ExactDedup()], (Document(d["id"], d["text"], d["source"]) for d in docs), results, False)
    acct.docs_in += len(docs)
    acct.removed.update(results.counts)
    for stage in results.stages.values():
        stage.name = f"{docs[0]['source']}:{stage.name}"
        acct.stages.append(stage)
    return [{"id": d.id, "text": d.text, "source": d.source} for d in kept]


def prepare_corpus(
    sources: list[dict],
    cache_dir: str,
    seq_len: int,
    val_fraction: float,
    vocab_size: int,
    min_frequency: int = 2,
    tokenizer_train_bytes: int = 20_000_000,
    max_docs: int | None = None,
    shard_bytes: int = 4_000_000,
    tokenizer: str | None = None,
) -> PreparedCorpus:
    """Prepare (or reuse) the corpus for these sources and settings; returns where it lies. `tokenizer`: a
    tokenizer.json to use (a checkpoint's, for init_from) instead of training one."""
    tok_cfg = {"vocab_size": vocab_size, "min_frequency": min_frequency, "train_bytes": tokenizer_train_bytes}
    if tokenizer:
        tok_cfg = {"file": tokenizer_digest(Path(os.path.expanduser(tokenizer)))}
    key = corpus_key(sources + [{"max_docs": max_docs}], tok_cfg, seq_len, val_fraction)
    root = Path(os.path.expanduser(cache_dir)) / "corpora" / key
    if (root / "meta.json").exists():  # complete: meta.json is written last
        return PreparedCorpus(root, json.loads((root / "meta.json").read_text()))
    from lmstack.ownership import OwnedFolder

    inputs = [f for s in sources if s.get("paths") for f in source_files(None, s["paths"])]
    with OwnedFolder(root, "corpus", inputs, wait=True) as owned:  # other ranks wait, then reuse it
        if (root / "meta.json").exists():
            return PreparedCorpus(root, json.loads((root / "meta.json").read_text()))
        log.info("preparing corpus in %s", root)
        tmp = owned.staging()
        per_source, acct = {}, Accounting()
        for src in sources:
            docs = list(read_source(src["name"], src.get("builtin"), src.get("paths"), src.get("text_field", "text")))
            if max_docs:
                docs = docs[:max_docs]
            if not docs:
                raise ValueError(f"data source {src['name']!r} yielded no documents")
            per_source[src["name"]] = _exact_dedup(docs, acct)
        meta = write_corpus(
            per_source,
            tmp,
            seq_len,
            val_fraction,
            vocab_size,
            min_frequency,
            tokenizer_train_bytes,
            shard_bytes,
            key,
            tokenizer,
        )
        size = sum(len(d["text"].encode()) for docs in per_source.values() for d in docs)
        acct.stages.append(tokenize_stage(meta, acct.docs_out, size))
        acct.write(tmp)
        owned.publish(tmp, last="meta.json")
    return PreparedCorpus(root, meta)
