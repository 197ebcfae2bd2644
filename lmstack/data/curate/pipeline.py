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

from .blocklists import IdBlocklist, UrlBlocklist
from .dedup import ExactDedup, MinHashDedup, ParagraphDedup, UrlDedup, clusters, to_remove
from .filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, LanguageID
from .pii import PiiMasker
from ..corpus_format import tokenize_stage, write_corpus
from .readers import Document, Reject, expand_inputs, file_fingerprint, read_inputs
from .stats import Accounting, StageStats
from .steps import Removed, Sizer, StepResults, apply_steps

log = logging.getLogger(__name__)

FILTERS = {"language": LanguageID, "gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition,
           "c4": C4Quality, "fineweb": FineWebQuality, "url_blocklist": UrlBlocklist, "id_blocklist": IdBlocklist}
STREAM_DEDUP = {"url": UrlDedup, "exact": ExactDedup, "paragraph": ParagraphDedup}


def _tuples(kw: dict) -> dict:
    """YAML gives lists; the rule parameters that are pairs want tuples."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in kw.items()}


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
        for item in read_inputs([path], cfg.get("source", "data"), cfg.get("text_field", "text"),
                                cfg.get("max_doc_bytes", 10_000_000)):
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


_PART_CLASSES = {("lmstack.data.curate.steps", "StepResults"), ("lmstack.data.curate.readers", "Document"),
                 ("lmstack.data.curate.stats", "StageStats"), ("collections", "Counter"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                 ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                 ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


def config_files(cfg: dict) -> list[dict]:
    """Fingerprints of the files the config names (blocklists, a given tokenizer): a changed blocklist
    changes the results as much as a changed input."""
    named = [f for kw in (cfg.get("filters") or {}).values() if isinstance(kw, dict) for f in kw.get("files") or []]
    named += [(cfg.get("tokenize") or {}).get("tokenizer")]
    return [file_fingerprint(os.path.expanduser(f)) for f in named if f and os.path.exists(os.path.expanduser(f))]


def _part_key(fingerprint: dict, cfg: dict, named: list[dict]) -> str:
    """A finished file's result is reused only for the same input content, the same per-file config and
    the same files the config names."""
    import xxhash

    per_file = {k: v for k, v in cfg.items() if k not in RUN_ONLY_KEYS}
    return xxhash.xxh64(json.dumps([fingerprint, per_file, named], sort_keys=True, default=str).encode()).hexdigest()


def _parts(files: list[str], fingerprints: list[dict], cfg: dict, num_workers: int, parts_dir: Path):
    """Per-file results in input order. Each finished file's result is saved in `parts_dir` under a key of
    its input's fingerprint and the config (written to a temporary name, then renamed), so a run started
    again after an interruption reuses those whose input and config are unchanged."""
    import pickle

    from lmstack import safe_unpickle

    named = config_files(cfg)
    saved = [parts_dir / f"{_part_key(fp, cfg, named)}.pkl" for fp in fingerprints]
    todo = [i for i in range(len(files)) if not saved[i].exists()]
    if len(todo) < len(files):
        log.info("resuming: %d of %d input files done", len(files) - len(todo), len(files))
    jobs = [(files[i], cfg) for i in todo]
    if num_workers <= 1 or len(jobs) <= 1:
        computed, pool = map(_filter_file, jobs), None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(num_workers)
        computed = pool.imap(_filter_file, jobs)
    try:
        for i in range(len(files)):
            if saved[i].exists():
                yield safe_unpickle.loads(saved[i].read_bytes(), _PART_CLASSES)
                continue
            part = next(computed)
            partial = saved[i].with_suffix(f".{os.getpid()}.partial")
            with open(partial, "wb") as f:
                pickle.dump(part, f)
            os.replace(partial, saved[i])
            yield part
    finally:
        if pool is not None:
            pool.terminate()


def _minhash(cfg: dict) -> MinHashDedup | None:
    mh = (cfg.get("dedup") or {}).get("minhash")
    return MinHashDedup(**(mh if isinstance(mh, dict) else {})) if mh else None


def _minhash_stage(kept: list[Document], keys: np.ndarray, acct: Accounting, removed: "Removed",
                   sizer: Sizer) -> list[Document]:
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
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata}) + "\n")


def _tokenize(kept: list[Document], out: Path, cfg: dict, acct: Accounting) -> None:
    tok_cfg = cfg.get("tokenize")
    if not tok_cfg or not kept:
        return
    source = cfg.get("source", "data")
    meta = write_corpus({source: [{"id": d.id, "text": d.text} for d in kept]}, out, tok_cfg["seq_len"],
                        tok_cfg.get("val_fraction", 0.02), tok_cfg["vocab_size"], tok_cfg.get("min_frequency", 2),
                        tokenizer=tok_cfg.get("tokenizer"))
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


# Config keys that change how a run is carried out, not what it produces.
RUN_ONLY_KEYS = ("num_workers", "shard_index", "num_shards")


def check_config(cfg: dict) -> None:
    """The prepare config, before any work: finite numbers, seeds >= 0, a valid shard, steps that build."""
    from lmstack.config.validate import check_values

    check_values(cfg, "prepare")
    num_shards, shard = cfg.get("num_shards", 1), cfg.get("shard_index", 0)
    if not isinstance(num_shards, int) or not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ValueError(f"prepare.shard_index={shard} must be in [0, prepare.num_shards={num_shards})")
    build_filters(cfg), build_dedup(cfg), Sizer.from_cfg(cfg), _minhash(cfg)


def changes(old: dict | None, new: dict) -> str:
    """What differs between two run fingerprints, for a message: input files and config keys."""
    if not old:
        return "no record of the earlier run's inputs"
    before = {f["path"]: f for f in old.get("inputs", [])}
    after = {f["path"]: f for f in new.get("inputs", [])}
    what = [f"input {p} {'added' if p not in before else 'removed' if p not in after else 'changed'}"
            for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p)]

    def flat(d, key=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in
                (flat(v, f"{key}{k}.").items() if isinstance(v, dict) else [(f"{key}{k}", v)])}

    a, b = flat(old.get("config", {})), flat(new.get("config", {}))
    what += [f"prepare.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(what[:8]) + ("; ..." if len(what) > 8 else "") if what else "nothing"


def job_fingerprint(files: list[str], cfg: dict) -> str:
    """The same for every shard of one sharded job (all its inputs, by path/size/mtime, and its config)."""
    import xxhash

    stats = [[file_fingerprint(f, hash_below=0).get(k) for k in ("path", "size", "mtime_ns")] for f in files]
    per_job = {k: v for k, v in cfg.items() if k not in ("num_workers", "shard_index")}
    return xxhash.xxh64(json.dumps([stats, per_job], sort_keys=True, default=str).encode()).hexdigest()


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
        fingerprint = {"inputs": fps + config_files(cfg), "config": {k: v for k, v in cfg.items() if k != "num_workers"}}
        if owned.complete and (out / "stats.json").is_file():
            if owned.marker.get("fingerprint") == fingerprint:
                log.info("%s is complete already, from the same inputs and config", out)
                return json.loads((out / "stats.json").read_text())
            log.warning("%s was prepared from other inputs or config (%s): preparing it again", out,
                        changes(owned.marker.get("fingerprint"), fingerprint))
        owned.update(status="running", fingerprint=fingerprint)
        parts_dir = out / ".work" / "parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        staging = owned.staging()
        acct = _prepare(files, fps, cfg, staging, parts_dir)
        if num_shards > 1:
            acct.extra.update(shard_index=shard, num_shards=num_shards, job=job_fingerprint(all_files, cfg))
        acct.write(staging)
        owned.publish(staging, last="stats.json")  # the previous results and .work go
        return acct.to_dict()


def _prepare(files: list[str], fps: list[dict], cfg: dict, tmp: Path, parts_dir: Path) -> Accounting:
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
        for part in _parts(files, fps, cfg, int(cfg.get("num_workers", 1)), parts_dir):
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
