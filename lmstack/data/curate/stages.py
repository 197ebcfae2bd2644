"""The tasks of `lmstack prepare`, each a function of one picklable job that any executor can run anywhere
the job's folders are visible (a shared file system on a cluster): the read task (read, filter, first keys),
the partition tasks (decide one share of the keys), and the pass tasks (apply one dedup step to one read
task's documents, then write the keys of the next step, or the outputs after the last).

Every task writes its own folder through `workdir.committed`, so a finished task is never run again."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from . import buckets
from . import partitions as parts
from .build import build_filters, dedup_steps
from .near_dups import components_removed, verify_pairs
from .pii import PiiMasker
from .readers import Document, Reject, read_inputs
from .stage_documents import Members, document_row, read_docs, removed_row, write_docs
from .stats import StageStats
from .steps import Sizer, StepResults, apply_steps
from .workdir import committed


def _result(part: StepResults, members: Members, kept: int, extra: dict | None = None) -> dict:
    return {
        "docs_in": part.docs_in,
        "kept": kept,
        "rejected": len(part.rejects),
        "counts": dict(part.counts),
        "stages": [vars(s) for s in part.stages.values()],
        "members": members.close(),
        **(extra or {}),
    }


def _finish(tmp: Path, docs: list, cfg, steps: list, step_index: int, members: Members) -> dict:
    """What every task that holds documents ends with: its documents, then the keys of dedup step
    `step_index`, or (after the last step) the documents' output member (and their bucket scores)."""
    write_docs(tmp, docs)
    if step_index < len(steps):
        parts.write_keys(tmp, steps[step_index], docs)
        return {"keys": parts.key_count(tmp)}
    for _, d in docs:
        members.write("documents.jsonl.gz", document_row(d))
    if cfg.tokenize is not None and cfg.tokenize.buckets is not None:  # the job-wide cuts need every score
        buckets.write_scores(tmp, docs, cfg.tokenize.buckets.by)
    return {}


def read_task(job: dict) -> dict:
    return committed(_read, job)


def _read(job: dict, tmp: Path) -> dict:
    """Read one input task, run the filters (and PII masking) over it, keep what passes."""
    task, cfg = job["task"], job["cfg"]
    part, members = StepResults(), Members(tmp)
    read = part.stages.setdefault("read", StageStats("read"))
    sizer = Sizer.from_section(cfg)

    def documents():
        items = read_inputs(
            [task.path],
            cfg.source,
            cfg.text_field,
            cfg.max_doc_bytes,
            span=task.span,
        )
        for item in items:
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
    kept = apply_steps(steps, documents(), part, cfg.keep_removed, sizer)
    read.bytes_in, read.tokens_in = read.bytes_out, read.tokens_out  # unreadable input has no size
    (tmp / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part.rejects))
    for rule, doc in part.removed:
        if doc is not None:
            members.write(f"{rule.replace('/', '.')}.jsonl.gz", removed_row(doc))
    pii = Counter()
    for s in steps:
        if isinstance(s, PiiMasker):
            pii.update(s.counts)
    extra = _finish(tmp, list(enumerate(kept)), cfg, dedup_steps(cfg), 0, members)
    return _result(part, members, len(kept), {**extra, "pii": dict(pii)})


def partition_task(job: dict) -> dict:
    return committed(_partition, job)


def _partition(job: dict, tmp: Path) -> dict:
    """Decide partition `p` of `n` of one dedup step's keys, over every task's key files."""
    step = dedup_steps(job["cfg"])[job["step"]]
    extra = {"paragraph_dedup": ("para",), "minhash_dedup": ("band",)}.get(step.name, ())
    g = parts.gather(job["folders"], job["p"], job["n"], extra)
    if hasattr(step, "decide"):  # a global step with its own rule (quality's keep_fraction)
        out = step.decide(g)
    elif step.name == "paragraph_dedup":
        out = parts.paragraphs_seen(g)
    elif step.name == "minhash_dedup":
        out = parts.bucket_edges(g)
    else:
        out = parts.first_seen(g)
    np.save(tmp / "rows.npy", out)
    return {"keys": len(g["keys"]), "rows": len(out)}


def verify_task(job: dict) -> dict:
    return committed(_verify, job)


def _verify(job: dict, tmp: Path) -> dict:
    kept = verify_pairs(job)
    np.save(tmp / "rows.npy", kept)
    return {"pairs": len(job["pairs"]), "verified": len(kept)}


def components_task(job: dict) -> dict:
    return committed(_components, job)


def _components(job: dict, tmp: Path) -> dict:
    """The MinHash decision: one process over the (few) pairs of every partition or verification task."""
    edges = [np.load(Path(f) / "rows.npy") for f in job["edge_folders"]]
    edges = np.unique(np.concatenate(edges), axis=0) if edges else np.zeros((0, 2), np.int64)
    removed = components_removed(edges)
    np.save(tmp / "rows.npy", removed)
    return {"pairs": len(edges), "removed": len(removed)}


def pass_task(job: dict) -> dict:
    return committed(_pass, job)


def _decided(job: dict) -> np.ndarray:
    """Task t's rows of the step's decision (document indices, or (index, paragraph) rows)."""
    rows = [parts.of_task(np.load(Path(f) / "rows.npy", mmap_mode="r"), job["t"]) for f in job["decisions"]]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _pass(job: dict, tmp: Path) -> dict:
    """Apply dedup step `step` to read task t's documents (or no step: the outputs of a job without
    dedup), then the next step's keys or the outputs."""
    cfg, k = job["cfg"], job["step"]
    part, members, sizer = StepResults(), Members(tmp), Sizer.from_section(cfg)
    docs, steps = list(read_docs(Path(job["prev"]))), dedup_steps(cfg)
    if k is not None:
        step, rows = steps[k], _decided(job)
        if step.name == "paragraph_dedup":
            drop: dict[int, set] = {}
            for i, j in rows.tolist():
                drop.setdefault(i, set()).add(j)
        else:
            gone = set(rows.tolist())
        reason = getattr(step, "reason", "near_duplicate")
        family = getattr(step, "family", step.name)  # the rule's prefix: quality/<name> for the quality share
        kept = []
        for i, d in docs:
            st = part.stages.setdefault(step.name, StageStats(step.name))
            st.count_in(sizer(d))
            if step.name == "paragraph_dedup":
                text = parts.drop_paragraphs(d.text, drop.get(i, set()))
                rule = None if text else "all_paragraphs_seen"  # a removed document keeps its text
                d.text = text or d.text
            else:
                rule = reason if i in gone else None
            if rule:
                part.counts[f"{family}/{rule}"] += 1
                if cfg.keep_removed:
                    members.write(f"{family}.{rule}.jsonl.gz", removed_row(d))
                continue
            st.count_out(sizer(d))
            kept.append((i, d))
        docs = kept
    extra = _finish(tmp, docs, cfg, steps, (k + 1) if k is not None else len(steps), members)
    return _result(part, members, len(docs), extra)
