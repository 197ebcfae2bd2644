"""`lmstack prepare`: read -> filter -> deduplicate -> tokenize, accounting for every document.

Outputs in `output_dir`: `documents.jsonl.gz` (the kept documents), `rejects.jsonl` (unreadable input,
with file, line and reason), `removed/RULE.jsonl.gz` when `keep_removed`, `stats.json`, `report.md`,
`report.png`, and the tokenized corpus (`tokenizer.json`, `<source>/train|val` litdata chunks,
`meta.json`) that training reads with `data_mix=prepared data_mix.dir=DIR`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from .blocklists import IdBlocklist, UrlBlocklist
from .dedup import ExactDedup, MinHashDedup, ParagraphDedup, UrlDedup
from .filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, LanguageID
from .pii import PiiMasker
from .readers import Document, Reject, expand_inputs, read_inputs
from .stats import Accounting, StageStats

log = logging.getLogger(__name__)

FILTERS = {"language": LanguageID, "gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition,
           "c4": C4Quality, "fineweb": FineWebQuality, "url_blocklist": UrlBlocklist, "id_blocklist": IdBlocklist}
STREAM_DEDUP = {"url": UrlDedup, "exact": ExactDedup, "paragraph": ParagraphDedup}


def _tuples(kw: dict) -> dict:
    """YAML gives lists; the rule parameters that are pairs want tuples."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in kw.items()}


def build_steps(cfg: dict) -> list:
    """The streaming steps in order: filters (config order), PII masking, then streaming dedup."""
    steps = []
    for name, kw in (cfg.get("filters") or {}).items():
        if kw is None or kw is False:
            continue
        if name not in FILTERS:
            raise ValueError(f"prepare.filters.{name}: unknown filter; allowed: {', '.join(FILTERS)}")
        steps.append(FILTERS[name](**_tuples(kw or {})))
    if cfg.get("pii"):
        steps.append(PiiMasker())
    for name, on in (cfg.get("dedup") or {}).items():
        if name == "minhash" or not on:
            continue
        if name not in STREAM_DEDUP:
            raise ValueError(f"prepare.dedup.{name}: unknown; allowed: {', '.join([*STREAM_DEDUP, 'minhash'])}")
        steps.append(STREAM_DEDUP[name](**(on if isinstance(on, dict) else {})))
    return steps


class _Removed:
    """Writes removed documents per rule, when asked to."""

    def __init__(self, out: Path | None):
        self.out, self.files = out, {}

    def add(self, rule: str, doc: Document) -> None:
        if self.out is None:
            return
        if rule not in self.files:
            self.out.mkdir(parents=True, exist_ok=True)
            self.files[rule] = gzip.open(self.out / f"{rule.replace('/', '.')}.jsonl.gz", "wt", encoding="utf-8")
        self.files[rule].write(json.dumps({"id": doc.id, "source": doc.source, "text": doc.text}) + "\n")

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _size(docs: list[Document]) -> int:
    return sum(len(d.text.encode("utf-8", errors="replace")) for d in docs)


def run_prepare(inputs: list[str], output_dir: str, cfg: dict) -> dict:
    """Run the configured pipeline; returns the stats dict (also written to output_dir/stats.json)."""
    out = Path(output_dir)
    if (out / "stats.json").exists():
        log.info("%s is complete already (stats.json exists); remove it to prepare again", out)
        return json.loads((out / "stats.json").read_text())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    acct = Accounting()
    removed = _Removed(tmp / "removed" if cfg.get("keep_removed") else None)
    steps = build_steps(cfg)
    stage = {s.name: StageStats(s.name) for s in steps}
    read = StageStats("read")
    kept: list[Document] = []
    t0 = time.time()
    with open(tmp / "rejects.jsonl", "w") as rejects, tqdm(unit="doc", desc="prepare") as bar:
        for item in read_inputs(expand_inputs(inputs), cfg.get("source", "data"), cfg.get("text_field", "text"),
                                cfg.get("max_doc_bytes", 10_000_000)):
            acct.docs_in += 1
            read.docs_in += 1
            bar.update()
            if isinstance(item, Reject):
                acct.rejected += 1
                rejects.write(json.dumps(vars(item)) + "\n")
                continue
            read.docs_out += 1
            size = len(item.text.encode("utf-8", errors="replace"))
            read.bytes_out += size
            for step in steps:
                st = stage[step.name]
                st.docs_in += 1
                st.bytes_in += size
                rule = step(item)
                if rule:
                    acct.removed[f"{step.name}/{rule}"] += 1
                    removed.add(f"{step.name}/{rule}", item)
                    break
                size = len(item.text.encode("utf-8", errors="replace"))
                st.docs_out += 1
                st.bytes_out += size
            else:
                kept.append(item)
    read.bytes_in = read.bytes_out
    acct.stages = [read, *stage.values()]
    for s in steps:
        if isinstance(s, PiiMasker):
            acct.extra["pii_masked"] = dict(s.counts)

    mh = (cfg.get("dedup") or {}).get("minhash")
    if mh and kept:
        mh_stage = StageStats("minhash_dedup", len(kept), bytes_in=_size(kept))
        dup = set(MinHashDedup(**(mh if isinstance(mh, dict) else {})).duplicates([d.text for d in kept]).tolist())
        for i in sorted(dup):
            acct.removed["minhash_dedup/near_duplicate"] += 1
            removed.add("minhash_dedup/near_duplicate", kept[i])
        kept = [d for i, d in enumerate(kept) if i not in dup]
        mh_stage.docs_out, mh_stage.bytes_out = len(kept), _size(kept)
        acct.stages.append(mh_stage)
    removed.close()

    with gzip.open(tmp / "documents.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in kept:
            f.write(json.dumps({"id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata}) + "\n")
    tok_cfg = cfg.get("tokenize")
    if tok_cfg and kept:
        from lmstack.data.prepare import write_corpus

        source = cfg.get("source", "data")
        meta = write_corpus({source: [{"id": d.id, "text": d.text} for d in kept]}, tmp, tok_cfg["seq_len"],
                            tok_cfg.get("val_fraction", 0.02), tok_cfg["vocab_size"], tok_cfg.get("min_frequency", 2))
        acct.stages.append(StageStats("tokenize", len(kept), len(kept), _size(kept), _size(kept),
                                      tokens_out=meta["sources"][source]["tokens"]))
    acct.extra["seconds"] = round(time.time() - t0, 2)
    acct.extra["docs_per_second"] = round(acct.docs_in / max(time.time() - t0, 1e-9), 1)
    acct.write(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return acct.to_dict()
