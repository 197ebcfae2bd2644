"""The schema of `lmstack prepare`'s pipeline (the `prepare` section, `conf/prepare/`), checked by
`to_dataclass` like every other section; the defaults are what the pipeline assumes for a key left out.
Filter and dedup options are the keyword arguments of their steps, checked when the steps are built.

A mapping of steps switches off as a whole with null or {} (`prepare.filters=null`, `prepare.dedup={}`): none of
its steps runs (`lmstack.config.store.replace_empty_mappings` makes `{}` replace the defaults, not merge into them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .validate import field_


@dataclass
class DedupSection:
    url: Union[bool, dict] = False  # exact URL dedup (true, or its options)
    exact: Union[bool, dict] = False  # exact text dedup
    paragraph: Union[bool, dict] = False  # paragraphs seen before go (Dolma); {min_chars: 50}
    minhash: Union[bool, dict, None] = None  # near duplicates: {ngram: 5, bands: 14, rows: 8, seed: 1, jaccard: null}


@dataclass
class BucketsSection:
    """Quality buckets: the corpus tokenized into one source per score range of a `prepare.quality` classifier,
    cut at job-wide quantiles of its score, so that a data mix can weight them (upsample the best)."""

    by: str  # the prepare.quality classifier whose score decides a document's bucket
    quantiles: list[float] = field_([0.5, 0.9])  # the cuts, job-wide score quantiles: [0.5, 0.9] gives 3 buckets


@dataclass
class TokenizeSection:
    vocab_size: int = field_(4096, min=258)  # the byte-level BPE's vocabulary (when no tokenizer is given)
    seq_len: int = field_(256, min=2)  # tokens per training block
    # documents held out for validation, chosen by a hash of their id
    val_fraction: float = field_(0.02, min=0.0, max=1.0)
    min_frequency: int = field_(2, min=1)  # the BPE's minimum pair frequency
    tokenizer: Optional[str] = None  # a tokenizer.json instead of training one; folders with one tokenizer mix
    # sources <source>_q0 (lowest scores) .. <source>_qN (highest) instead of one <source>; null: one source
    buckets: Optional[BucketsSection] = None


@dataclass
class DecontaminateSection:
    """Documents sharing an n-gram with an eval set go (lmstack/data/curate/decontaminate.py)."""

    tasks: list[str] = field_([])  # OLMES task folders or request files, JSONL files; `lmstack prepare` takes names too
    ngram: int = field_(13, min=1)  # words per n-gram (GPT-3, datatrove)
    min_words: int = field_(8, min=1)  # shorter eval items are matched whole from this many words, else only counted


@dataclass
class RaySection:
    address: Optional[str] = None  # null: start a Ray on this machine; `auto` or HOST:PORT: join that cluster


@dataclass
class PrepareSection:
    imports: list[str] = field_([])  # modules imported first (in every worker): your filters register themselves
    source: str = "data"  # the name documents carry
    text_field: str = "text"  # the documents' text key in JSONL and Parquet rows
    max_doc_bytes: int = field_(10_000_000, min=1)  # larger documents are rejected, not read
    keep_removed: bool = False  # true: removed/RULE.jsonl.gz holds what each rule dropped
    executor: Literal["local", "ray"] = "local"  # where tasks run: processes here, or Ray tasks
    ray: RaySection = field(default_factory=RaySection)
    num_workers: int = field_(1, min=1)  # processes (local) or Ray CPUs started here (one task at a time)
    task_bytes: int = field_(64_000_000, min=1)  # a JSONL file bigger than this is read as several tasks
    work_dir: Optional[str] = None  # output_dir a URL: the local folder the job runs in before the upload
    count_tokens: bool = False  # count every stage's tokens exactly (needs tokenize.tokenizer)
    filters: Optional[dict] = field_({})  # name -> its options, in order; null skips one; null or {}: no filter
    pii: Optional[bool] = False  # mask e-mail addresses, IP addresses and phone numbers (null: off)
    # name -> {model: PATH, threshold: T} or {model: PATH, keep_fraction: F} or {model: PATH} (scores only), and
    # label: the class kept (__label__hq); a fastText .bin or a Hugging Face sequence-classification folder
    # scores every document; null or {}: none
    quality: Optional[dict] = field_({})
    decontaminate: Optional[DecontaminateSection] = field(default_factory=DecontaminateSection)  # null or {}: off
    dedup: Optional[DedupSection] = field(default_factory=DedupSection)  # null or {}: no dedup step at all
    tokenize: Optional[TokenizeSection] = field(default_factory=TokenizeSection)  # null: stop after the documents
