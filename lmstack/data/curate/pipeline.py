"""`lmstack prepare`: read -> filter -> deduplicate -> tokenize, accounting for every document.

Outputs in `output_dir`: `documents.jsonl.gz` (the kept documents), `rejects.jsonl` (unreadable input,
with file, line and reason), `removed/RULE.jsonl.gz` when `keep_removed`, `stats.json`, `report.md`,
`report.png`, and the tokenized corpus (`tokenizer.json`, `<source>/train|val` litdata chunks,
`meta.json`) that training reads with `data_mix=prepared data_mix.dir=DIR`. A job sharded over machines
ends with `merge.merge_shards` (`lmstack prepare-merge`).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..corpus_format import tokenize_stage, write_corpus
from .blocklists import IdBlocklist, UrlBlocklist
from .dedup import ExactDedup, MinHashDedup, ParagraphDedup, UrlDedup, clusters, to_remove
from .filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, LanguageID
from .pii import PiiMasker
from .readers import Document, Reject, expand_inputs, file_fingerprint, read_inputs
from .resume import changes, config_files, job_fingerprint, parts
from .stats import Accounting, StageStats
from .steps import Removed, Sizer, StepResults, apply_steps

log = logging.getLogger(__name__)

FILTERS = {
    "language": LanguageID,
    "gopher_quality": GopherQuality,
    "gopher_repetition": GopherRepetition,
    "c4": C4Quality,
    "fineweb": FineWebQuality,
    "url_blocklist": UrlBlocklist,
    "id_blocklist": IdBlocklist,
}
STREAM_DEDUP = {"url": UrlDedup, "exact": ExactDedup, "paragraph": ParagraphDedup}


def _tuples(kw: dict) -> dict:
    """YAML gives lists; the rule parameters that are pairs want tuples."""
    return {
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in kw.items()
    }


def build_filters(cfg: dict) -> list:
    """The per-document steps, in order: filters (config order), then PII masking."""
    steps = []
    for name, kw in (cfg.get("filters") or {}).items():
        if kw is None or kw is False:
            continue
        if name not in FILTERS:
            raise ValueError(f"prepare.filters.{name}: unknown filter; allowed: {', '.join(FILTERS)}")
        steps.append(FILTERS[name](**_tuples(kw or {})))
    if cfg.get("pii"):
        steps.append(PiiMasker())
    return steps


def build_dedup(cfg: dict) -> list:
    """The streaming dedup steps (they remember what they saw, so they run in one process, in order)."""
    steps = []
    for name, on in (cfg.get("dedup") or {}).items():
        if name == "minhash" or not on:
            continue
        if name not in STREAM_DEDUP:
            raise ValueError(f"prepare.dedup.{name}: unknown; allowed: {', '.join([*STREAM_DEDUP, 'minhash'])}")
        steps.append(STREAM_DEDUP[name](**(on if isinstance(on, dict) else {})))
    return steps


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pool)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _size(docs: list[Document]) -> int:
    return sum(len(d.text.encode("utf-8", errors="replace")) for d in docs)


def _precompute(docs: list[Document], cfg: dict) -> None:
    """The worker's share of deduplication: each document's exact/URL keys and MinHash band keys, cached
    on it, so the parent (which must see documents in order) only looks keys up."""
    for step in build_dedup(cfg):
        if hasattr(step, "key"):
            for d in docs:
                d.cached(step.name, step.key)
    mh = _minhash(cfg)
    if mh and docs:
        for d, k in zip(docs, mh.band_keys([d.text for d in docs])):
            d.cache["band_keys"] = (d.text, k)


def _band_keys(docs: list[Document], mh: MinHashDedup) -> np.ndarray:
    """Band keys of the documents, computed here only for those whose text changed since the worker's."""
    stale = [d for d in docs if d.cache.get("band_keys", (None,))[0] is not d.text]
    if stale:
        for d, k in zip(stale, mh.band_keys([d.text for d in stale])):
            d.cache["band_keys"] = (d.text, k)
    if not docs:
        return np.zeros((0, mh.bands), dtype=np.uint64)
    return np.stack([d.cache["band_keys"][1] for d in docs])


def _filter_file(args) -> StepResults:
    """Worker: read one input file and run the per-document steps over it."""
    path, cfg = args
    part = StepResults()
    read = part.stages.setdefault("read", StageStats("read"))
    sizer = Sizer.from_cfg(cfg)

    def documents():
        for item in read_inputs(
            [path], cfg.get("source", "data"), cfg.get("text_field", "text"), cfg.get("max_doc_bytes", 10_000_000)
        ):
            part.docs_in += 1
            read.docs_in += 1
            if isinstance(item, Document):
                try:
                    size = sizer(item)
                except Exception as e:  # noqa: BLE001 - e.g. the tokenizer refusing a document
                    item = item.reject(f"read failed: {type(e).__name__}: {e}")
            if isinstance(item, Reject):
                part.rejects.append(vars(item))
                continue
            read.count_out(size)
            yield item

    steps = build_filters(cfg)
    part.kept = apply_steps(steps, documents(), part, bool(cfg.get("keep_removed")), sizer)
    read.bytes_in, read.tokens_in = read.bytes_out, read.tokens_out  # unreadable input has no size
    _precompute(part.kept, cfg)
    for s in steps:
        if isinstance(s, PiiMasker):
            part.pii.update(s.counts)
    return part


def _minhash(cfg: dict) -> MinHashDedup | None:
    mh = (cfg.get("dedup") or {}).get("minhash")
    return MinHashDedup(**(mh if isinstance(mh, dict) else {})) if mh else None


def _minhash_stage(
    kept: list[Document], keys: np.ndarray, acct: Accounting, removed: "Removed", sizer: Sizer
) -> list[Document]:
    """Clusters over all the band keys, then the documents that are not the first of their cluster go,
    counted as a stage and a rule."""
    dup = set(to_remove(clusters(keys)).tolist())
    stage, out = StageStats("minhash_dedup"), []
    for i, d in enumerate(kept):
        stage.count_in(sizer(d))
        if i in dup:
            acct.removed["minhash_dedup/near_duplicate"] += 1
            removed.add("minhash_dedup/near_duplicate", d)
        else:
            stage.count_out(sizer(d))
            out.append(d)
    acct.stages.append(stage)
    return out


def _write_documents(path: Path, docs: list[Document]) -> None:
    """documents.jsonl.gz, byte for byte the same for the same documents (no time in the gzip header)."""
    import io

    with io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata}) + "\n")


def _tokenize(kept: list[Document], out: Path, cfg: dict, acct: Accounting) -> None:
    tok_cfg = cfg.get("tokenize")
    if not tok_cfg or not kept:
        return
    source = cfg.get("source", "data")
    meta = write_corpus(
        {source: [{"id": d.id, "text": d.text} for d in kept]},
        out,
        tok_cfg["seq_len"],
        tok_cfg.get("val_fraction", 0.02),
        tok_cfg["vocab_size"],
        tok_cfg.get("min_frequency", 2),
        tokenizer=tok_cfg.get("tokenizer"),
    )
    acct.stages.append(tokenize_stage(meta, len(kept), _size(kept)))
    _estimate_tokens(acct)


def _estimate_tokens(acct: Accounting) -> None:
    """Stages that ran before a tokenizer existed get tokens estimated from their bytes, at the tokens per
    byte measured on the output (and marked as estimated)."""
    tok = next((s for s in acct.stages if s.name == "tokenize"), None)
    if tok is None or not tok.bytes_in:
        return
    rate = tok.tokens_in / tok.bytes_in
    for s in acct.stages:
        if s.tokens_in is None:
            s.tokens_in, s.tokens_out = round(s.bytes_in * rate), round(s.bytes_out * rate)
            s.tokens_estimated = True


def check_config(cfg: dict) -> None:
    """The prepare config, before any work: finite numbers, seeds >= 0, a valid shard, steps that build."""
    from lmstack.config.prepare import PrepareSection
    from lmstack.config.validate import check_values, to_dataclass

    check_values(cfg, "prepare")
    section = to_dataclass(PrepareSection, cfg, "prepare")  # keys, types and bounds, as for every section
    if not section.shard_index < section.num_shards:
        raise ValueError(
            f"prepare.shard_index={section.shard_index} must be in [0, prepare.num_shards={section.num_shards})"
        )
    build_filters(cfg), build_dedup(cfg), Sizer.from_cfg(cfg), _minhash(cfg)


def run_prepare(inputs: list[str], output_dir: str, cfg: dict) -> dict:
    """Run the configured pipeline; returns the stats dict (also written to output_dir/stats.json).

    `cfg` may carry `num_workers` (processes on this machine, one input file at a time) and
    `shard_index` / `num_shards` (this job prepares every num_shards-th input file, for arrays of jobs
    on many machines, each with its own output_dir). The output folder is claimed first
    (`lmstack.ownership`: lmstack's own or new, apart from the inputs, locked against a second run); a
    finished run with the same input fingerprints and config is returned as it is, otherwise the results
    of unchanged input files are reused and the rest recomputed."""
    from lmstack.ownership import OwnedFolder

    check_config(cfg)
    all_files = expand_inputs(inputs)
    num_shards, shard = cfg.get("num_shards", 1), cfg.get("shard_index", 0)
    files = all_files[shard::num_shards]
    with OwnedFolder(output_dir, "prepare", all_files) as owned:
        out = owned.path
        fps = [file_fingerprint(f) for f in files]
        named = config_files(cfg)
        fingerprint = {
            "inputs": fps + named,
            "config": {k: v for k, v in cfg.items() if k not in ("num_workers", "executor", "ray")},
        }
        if owned.complete and (out / "stats.json").is_file():
            if owned.marker.get("fingerprint") == fingerprint:
                log.info("%s is complete already, from the same inputs and config", out)
                return json.loads((out / "stats.json").read_text())
            log.warning(
                "%s was prepared from other inputs or config (%s): preparing it again",
                out,
                changes(owned.marker.get("fingerprint"), fingerprint),
            )
        owned.update(status="running", fingerprint=fingerprint)
        parts_dir = out / ".work" / "parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        staging = owned.staging()
        acct = _prepare(files, fps, named, cfg, staging, parts_dir)
        if num_shards > 1:
            acct.extra.update(shard_index=shard, num_shards=num_shards, job=job_fingerprint(all_files, cfg))
        acct.write(staging)
        owned.publish(staging, last="stats.json")  # the previous results and .work go
        return acct.to_dict()


def _prepare(files: list[str], fps: list[dict], named: list[dict], cfg: dict, tmp: Path, parts_dir: Path) -> Accounting:
    """The pipeline over `files`, its results written into `tmp`; returns the accounting."""
    t0, cpu0 = time.time(), _cpu_seconds()
    acct = Accounting()
    removed = Removed(tmp / "removed" if cfg.get("keep_removed") else None)
    dedup, sizer = build_dedup(cfg), Sizer.from_cfg(cfg)
    dedup_part = StepResults()
    stages: dict[str, StageStats] = {}
    kept: list[Document] = []
    pii = Counter()
    with open(tmp / "rejects.jsonl", "w") as rejects, tqdm(total=len(files), unit="file", desc="prepare") as bar:
        for part in parts(files, fps, cfg, named, int(cfg.get("num_workers", 1)), parts_dir, _filter_file):
            acct.docs_in += part.docs_in
            acct.removed.update(part.counts)
            for rule, doc in part.removed:
                if doc is not None:
                    removed.add(rule, doc)
            for name, st in part.stages.items():
                stages.setdefault(name, StageStats(name)).add(st)
            pii.update(part.pii)
            kept.extend(apply_steps(dedup, part.kept, dedup_part, bool(cfg.get("keep_removed")), sizer))
            for r in part.rejects + dedup_part.rejects:
                rejects.write(json.dumps(r) + "\n")
            acct.rejected += len(part.rejects) + len(dedup_part.rejects)
            dedup_part.rejects = []
            bar.update()
            bar.set_postfix_str(f"{acct.docs_in:,} docs, {acct.docs_in / max(time.time() - t0, 1e-9):,.0f} docs/s")
    acct.removed.update(dedup_part.counts)
    for rule, doc in dedup_part.removed:
        if doc is not None:
            removed.add(rule, doc)
    acct.stages = [*stages.values(), *dedup_part.stages.values()]
    if cfg.get("pii"):
        acct.extra["pii_masked"] = dict(pii)
    mh = _minhash(cfg)
    if cfg.get("num_shards", 1) > 1:
        # One job of many: MinHash and tokenization need every shard, so they wait for `prepare-merge`;
        # this shard leaves its documents and their MinHash band keys.
        if mh:
            np.save(tmp / "band_keys.npy", _band_keys(kept, mh))
        removed.close()
        _write_documents(tmp / "documents.jsonl.gz", kept)
    else:
        if mh and kept:
            kept = _minhash_stage(kept, _band_keys(kept, mh), acct, removed, sizer)
        removed.close()
        _write_documents(tmp / "documents.jsonl.gz", kept)
        _tokenize(kept, tmp, cfg, acct)
    wall = max(time.time() - t0, 1e-9)
    acct.extra["seconds"] = round(wall, 2)
    acct.extra["docs_per_second"] = round(acct.docs_in / wall, 1)
    acct.extra["cpu_utilisation"] = round((_cpu_seconds() - cpu0) / wall / (os.cpu_count() or 1), 3)
    acct.extra["files"] = len(files)
    return acct
