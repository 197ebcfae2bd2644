"""The on-disk corpus format that training reads: token blocks in litdata chunks, and the tokenizer.

Layout of a tokenized corpus folder (a cached training corpus, or the output of `lmstack prepare`):

    tokenizer.json            byte-level BPE (or the tokenizer given)
    <source>/train/, <source>/val/   litdata chunks; each item is a block of seq_len + 1 tokens
                              ("tokens") and, per token, the ordinal of its document ("doc")
    <source>/documents.jsonl  ordinal -> id, source, split, bytes (for spike forensics and blocklists)
    stats.json, report.md     the accounting of what came in and what was removed
    meta.json                 written last: its presence means the corpus is complete

Documents are joined with an EOS token between them; a document goes to validation by a hash of its id.
Reading checks the chunks' serializers first (only numpy ones: litdata also has a pickle serializer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from . import storage
from .curate.stats import StageStats
from .sources import is_validation
from .tokenizer import eos_id, train_bpe

log = logging.getLogger(__name__)


@dataclass
class PreparedCorpus:
    root: Path  # local: the folder, or for a corpus at a URL the local copy of its small files
    meta: dict
    blocks_url: str | None = None  # a corpus at a URL: its token chunks, streamed from there by litdata

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer.json"

    def split_dir(self, source: str, split: str) -> str:
        if self.blocks_url:
            return storage.join(self.blocks_url, source, split)
        return str(self.root / source / split)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(str(self.tokenizer_path))


def tokenizer_digest(path: Path) -> str:
    """What must be equal for two prepared folders to be mixed: the tokenizer's file content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _mirror(url: str, cache_dir: str | None) -> Path:
    """The small files of a corpus at a URL (meta, stats, tokenizer, each source's documents.jsonl) in a
    local folder of lmstack's cache, so that everything but the token chunks reads them as local files."""
    import xxhash

    base = Path(os.path.expanduser(cache_dir or os.environ.get("LMSTACK_CACHE") or "~/.cache/lmstack"))
    root = base / "remote" / xxhash.xxh64(url.encode()).hexdigest()
    try:
        meta = json.loads(storage.read_text(storage.join(url, "meta.json")))
    except FileNotFoundError:
        return root  # no meta.json: refused below
    names = ["meta.json", "tokenizer.json", "stats.json", *(f"{s}/documents.jsonl" for s in meta["sources"])]
    for name in names:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with storage.open_binary(storage.join(url, name)) as src:
                data = src.read()
        except FileNotFoundError:
            continue
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # ranks copying at once each replace the file whole
    return root


def load_prepared(path: str, seq_len: int, cache_dir: str | None = None) -> PreparedCorpus:
    """A corpus that `lmstack prepare` wrote (a folder or a URL); its block length must be the training
    sequence length."""
    url = str(path) if storage.is_url(path) else None
    root = _mirror(url, cache_dir) if url else Path(storage.local(path))
    if not (root / "meta.json").exists():
        raise FileNotFoundError(
            f"{path} holds no prepared corpus (no meta.json); run `lmstack prepare` with prepare.tokenize set"
        )
    meta = json.loads((root / "meta.json").read_text())
    if meta["seq_len"] != seq_len:
        raise ValueError(
            f"{path} was tokenized into blocks of {meta['seq_len']} tokens but data.seq_len={seq_len}; "
            f"set data.seq_len={meta['seq_len']}"
        )
    return PreparedCorpus(root, meta, url)


def _blocks(tok: Tokenizer, shard: list[tuple[int, str]], seq_len: int, counts: dict):
    """Tokenize a shard of (ordinal, text), join with EOS, cut into blocks of seq_len + 1 tokens.

    Consecutive blocks overlap by one token (the last input's target is the next block's first input);
    a shard's tail shorter than a block is dropped. `counts["document_tokens"]` grows by the documents'
    own tokens (EOS not included).
    """
    eos = eos_id(tok)
    ordinals, texts = zip(*shard)
    ids, docs = [], []
    for ordinal, enc in zip(ordinals, tok.encode_batch(list(texts))):
        ids.append(np.asarray(enc.ids + [eos], dtype=np.int32))
        docs.append(np.full(len(enc.ids) + 1, ordinal, dtype=np.int32))
        counts["document_tokens"] += len(enc.ids)
    ids, docs = np.concatenate(ids), np.concatenate(docs)
    for start in range(0, len(ids) - seq_len, seq_len):
        yield {"tokens": ids[start : start + seq_len + 1], "doc": docs[start : start + seq_len + 1]}


def _shards(docs: list[tuple[int, str]], target_bytes: int) -> list[list[tuple[int, str]]]:
    shards, cur, size = [], [], 0
    for d in docs:
        cur.append(d)
        size += len(d[1])
        if size >= target_bytes:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    return shards


def _write_split(docs, out_dir: Path, tok: Tokenizer, seq_len: int, shard_bytes: int, counts: dict) -> int:
    """Write litdata chunks in this process (deterministic order, no worker start-up); returns #blocks."""
    from litdata.streaming.writer import BinaryWriter
    from tqdm import tqdm

    writer = BinaryWriter(str(out_dir), chunk_bytes="32MB")
    n = 0
    with tqdm(total=len(docs), unit="doc", desc=f"tokenize {out_dir.parent.name}/{out_dir.name}") as bar:
        for shard in _shards(docs, shard_bytes):
            for block in _blocks(tok, shard, seq_len, counts):
                writer[n] = block
                n += 1
            bar.update(len(shard))
    if n == 0:
        raise too_few_tokens(out_dir, seq_len)
    writer.done()
    writer._merge_no_wait()  # one writer, so no need to wait for other workers' index files
    return n


def too_few_tokens(split_dir: Path, seq_len: int) -> ValueError:
    return ValueError(
        f"{split_dir}: the documents hold fewer than seq_len + 1 = {seq_len + 1} tokens; "
        "add data, lower data.seq_len or change data.val_fraction"
    )


def write_corpus(
    per_source: dict[str, list[dict]],
    out: Path,
    seq_len: int,
    val_fraction: float,
    vocab_size: int,
    min_frequency: int = 2,
    tokenizer_train_bytes: int = 20_000_000,
    shard_bytes: int = 4_000_000,
    key: str = "",
    tokenizer: str | None = None,
) -> dict:
    """Train the tokenizer on the training documents (or take the `tokenizer` file given, so that several
    prepared folders share one and can be mixed) and write every source's litdata splits into `out`
    (which must exist); documents are dicts with `id` and `text`. Returns the corpus metadata."""
    if tokenizer:
        tok = Tokenizer.from_file(str(Path(os.path.expanduser(tokenizer))))
        eos_id(tok)  # refuses a tokenizer without an end-of-text token
    else:
        pairs = ((d["id"], d["text"]) for docs in per_source.values() for d in docs)
        sample = tokenizer_sample(pairs, val_fraction, tokenizer_train_bytes)
        log.info("training a %d-token BPE tokenizer on %.1f MB", vocab_size, sum(map(len, sample)) / 1e6)
        tok = train_bpe(sample, vocab_size, min_frequency)
    tok.save(str(out / "tokenizer.json"))

    meta = corpus_meta(out, seq_len, key)
    for name, docs in per_source.items():
        (out / name).mkdir()
        splits = {"train": [], "val": []}
        with open(out / name / "documents.jsonl", "w") as f:
            for ordinal, d in enumerate(docs):
                row = document_row(ordinal, d["id"], name, d["text"], val_fraction)
                splits[row["split"]].append((ordinal, d["text"]))
                f.write(json.dumps(row) + "\n")
        tally = {"document_tokens": 0}
        counts = {
            s: _write_split(splits[s], out / name / s, tok, seq_len, shard_bytes, tally) for s in ("train", "val")
        }
        meta["sources"][name] = source_meta(len(docs), counts, len(splits["val"]), tally["document_tokens"], seq_len)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def tokenizer_sample(docs, val_fraction: float, limit: int) -> list[str]:
    """The texts a tokenizer is trained on: the first training documents (id, text), up to `limit` characters."""
    sample, size = [], 0
    for doc_id, text in docs:
        if size >= limit:
            break
        if not is_validation(doc_id, val_fraction):
            sample.append(text)
            size += len(text)
    return sample


def document_row(ordinal: int, doc_id: str, source: str, text: str, val_fraction: float) -> dict:
    """A line of `<source>/documents.jsonl`: where a document's tokens went (spike forensics, blocklists)."""
    split = "val" if is_validation(doc_id, val_fraction) else "train"
    return {"ordinal": ordinal, "id": doc_id, "source": source, "split": split, "bytes": len(text.encode())}


def corpus_meta(out: Path, seq_len: int, key: str = "") -> dict:
    """meta.json without its sources, for the tokenizer saved in `out`."""
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    return {
        "key": key,
        "seq_len": seq_len,
        "vocab_size": vocab,
        "tokenizer": tokenizer_digest(out / "tokenizer.json"),
        "sources": {},
    }


def source_meta(documents: int, blocks: dict, val_documents: int, document_tokens: int, seq_len: int) -> dict:
    """meta.json's entry for one source."""
    return {
        "documents": documents,
        "blocks": blocks,
        "val_documents": val_documents,
        "tokens": (blocks["train"] + blocks["val"]) * seq_len,
        "document_tokens": document_tokens,
    }


def tokenize_stage(meta: dict, docs: int, size: int) -> StageStats:
    """The tokenize stage's accounting: the documents' own tokens in, the tokens in training blocks out
    (EOS between documents added, each split's tail shorter than a block dropped)."""
    return StageStats(
        "tokenize",
        docs,
        docs,
        size,
        size,
        tokens_in=sum(m["document_tokens"] for m in meta["sources"].values()),
        tokens_out=sum(m["tokens"] for m in meta["sources"].values()),
    )


SAFE_FORMATS = ("no_header_numpy", "numpy")  # litdata serializers that only reinterpret bytes as an array


def block_count(path: str) -> int:
    """The number of blocks in a folder of token blocks (all of them, whichever rank asks)."""
    return sum(int(c["chunk_size"]) for c in check_block_format(path)["chunks"])


def check_block_format(path: str) -> dict:
    """A folder of token blocks may name only numpy serializers: litdata also has a pickle serializer, and a
    crafted index.json naming it would run code from the chunks when training reads them. Returns the index."""
    index = storage.join(path, "index.json")
    try:
        meta = json.loads(storage.read_text(index))
        formats = meta["config"]["data_format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a folder of token blocks lmstack wrote ({type(e).__name__}: {e})") from None
    bad = [f for f in formats if not isinstance(f, str) or f.split(":")[0] not in SAFE_FORMATS]
    if bad:
        raise ValueError(f"{index}: serializer {bad[0]!r} refused; lmstack reads only numpy token blocks")
    return meta
