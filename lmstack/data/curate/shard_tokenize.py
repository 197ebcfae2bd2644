"""Tokenization of a prepared corpus in parallel: the tokenizer trained once on the first training documents
(at most `tokenizer_train_bytes`, as `write_corpus` does), then every task tokenizes its own documents into its
own litdata chunks, and one index per split lists all chunks in task order. The layout is the one training
reads (`corpus_format`): `<source>/train|val` chunks, `<source>/documents.jsonl`, `tokenizer.json`,
`meta.json` last; with quality buckets, those of each bucket's source (`buckets`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..corpus_format import _blocks, _shards, corpus_meta, document_row, source_meta, tokenizer_sample, too_few_tokens
from ..tokenizer import eos_id, train_bpe
from . import buckets
from .stage_documents import read_docs
from .workdir import committed

TOKENIZER_TRAIN_BYTES = 20_000_000
SHARD_BYTES = 4_000_000
SPLITS = ("train", "val")


def make_tokenizer(folders: list[Path], tok_cfg, out: Path) -> Path:
    """tokenizer.json in `out`: the one given, or a BPE trained on the first training documents (`tok_cfg`:
    the prepare section's TokenizeSection)."""
    from tokenizers import Tokenizer

    if tok_cfg.tokenizer:
        tok = Tokenizer.from_file(os.path.expanduser(tok_cfg.tokenizer))
        eos_id(tok)  # refuses a tokenizer without an end-of-text token
    else:
        pairs = ((d.id, d.text) for folder in folders for _, d in read_docs(folder))
        sample = tokenizer_sample(pairs, tok_cfg.val_fraction, TOKENIZER_TRAIN_BYTES)
        tok = train_bpe(sample, tok_cfg.vocab_size, tok_cfg.min_frequency)
    tok.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


def tokenize_task(job: dict) -> dict:
    return committed(_tokenize, job)


def _tokenize(job: dict, tmp: Path) -> dict:
    """One task's documents as token blocks (`<part>/<split>/` chunks) and their `<part>/documents.jsonl` rows:
    one part, the job's source, or one per quality bucket (`job["buckets"]`: the classifier and the cuts)."""
    from litdata.streaming.writer import BinaryWriter
    from tokenizers import Tokenizer

    tok, cut = Tokenizer.from_file(job["tokenizer"]), job.get("buckets")
    splits: dict[str, dict[str, list]] = {p: {s: [] for s in SPLITS} for p in job["parts"]}
    rows: dict[str, list[str]] = {p: [] for p in job["parts"]}
    for ordinal, (_, d) in enumerate(read_docs(Path(job["folder"])), start=job["first_ordinal"]):
        part = job["parts"][buckets.bucket(d.metadata["quality"][cut["by"]], cut["edges"]) if cut else 0]
        row = document_row(ordinal, d.id, part, d.text, job["val_fraction"])
        splits[part][row["split"]].append((ordinal, d.text))
        rows[part].append(json.dumps(row) + "\n")
    results = {}
    for part, by_split in splits.items():
        (tmp / part).mkdir()
        (tmp / part / "documents.jsonl").write_text("".join(rows[part]))
        counts, tally = {}, {"document_tokens": 0}
        for split, docs in by_split.items():
            writer, n = None, 0
            for shard in _shards(docs, SHARD_BYTES):
                for block in _blocks(tok, shard, job["seq_len"], tally):
                    writer = writer or BinaryWriter(str(tmp / part / split), chunk_bytes="32MB")
                    writer[n] = block
                    n += 1
            if writer is not None:
                writer.done()
                writer._merge_no_wait()  # one writer: its own index.json now
            counts[split] = n
        results[part] = {
            "blocks": counts,
            "val_documents": len(by_split["val"]),
            "documents": sum(map(len, by_split.values())),
            "bytes": sum(len(t.encode()) for docs in by_split.values() for _, t in docs),
            **tally,
        }
    return {"parts": results}


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (no copy), else a copy: the task's folder keeps its
    chunks, so a job killed after this point merges them again."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def merge_tokenized(folders: list[Path], results: list[dict], out: Path, seq_len: int, described: dict) -> dict:
    """Each part's chunks, over the tasks, moved into `out/<part>/<split>/` under one index each, their
    document rows joined, and meta.json (written last); `described`: part -> what meta.json says of it beyond
    its counts (a bucket's score range)."""
    meta = corpus_meta(out, seq_len)
    for part in results[0]["parts"]:
        root = out / part
        root.mkdir()
        for split in SPLITS:
            (root / split).mkdir()
            chunks, config = [], None
            for t, folder in enumerate(folders):
                index = folder / part / split / "index.json"
                if not index.is_file():
                    continue
                meta_t = json.loads(index.read_text())
                config = config or meta_t["config"]
                for c in meta_t["chunks"]:
                    name = f"chunk-{t}-{len(chunks)}.bin"
                    _link_or_copy(folder / part / split / c["filename"], root / split / name)
                    chunks.append({**c, "filename": name})
            if not chunks:
                raise too_few_tokens(root / split, seq_len)
            index = {"chunks": chunks, "config": config, "updated_at": "0"}
            (root / split / "index.json").write_text(json.dumps(index))
        with open(root / "documents.jsonl", "wb") as f:
            for folder in folders:
                f.write((folder / part / "documents.jsonl").read_bytes())
        mine = [r["parts"][part] for r in results]
        meta["sources"][part] = source_meta(
            sum(r["documents"] for r in mine),
            {s: sum(r["blocks"][s] for r in mine) for s in SPLITS},
            sum(r["val_documents"] for r in mine),
            sum(r["document_tokens"] for r in mine),
            seq_len,
        ) | described.get(part, {})
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
