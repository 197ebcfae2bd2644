"""Readers for raw documents. Every problem becomes a `Reject` with file, line and reason; nothing is
dropped silently and one bad file or line never stops the run.

Formats: .jsonl / .jsonl.gz / .jsonl.zst / .json.gz (one object per line), .parquet, folders of .txt
files, and WARC (.warc / .warc.gz) HTTP responses whose HTML goes through resiliparse's main-content
extraction.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union


@dataclass
class Document:
    id: str
    text: str
    source: str
    metadata: dict = field(default_factory=dict)
    # values a worker computed from `text` for later steps (size, dedup keys), each stored with the text it
    # was computed from so that a step which rewrites the text invalidates it; never written out
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def cached(self, name: str, compute):
        hit = self.cache.get(name)
        if hit is None or hit[0] is not self.text:
            hit = self.cache[name] = (self.text, compute(self))
        return hit[1]


@dataclass
class Reject:
    file: str
    line: int | None
    reason: str


Item = Union[Document, Reject]
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json")


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by paths, globs and folders (folders: their .txt files count as one input)."""
    files = []
    for pat in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        if not matched:
            raise FileNotFoundError(f"input {pat!r} matches no file")
        files.extend(matched)
    return files


def _binary_lines(path: str):
    if path.endswith(".zst"):
        import zstandard

        fh = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    elif path.endswith(".gz"):
        fh = gzip.open(path, "rb")
    else:
        fh = open(path, "rb")
    with fh:
        yield from io.BufferedReader(fh) if path.endswith(".zst") else fh


def _check(doc: Document, path: str, line: int | None, max_bytes: int) -> Item:
    if not doc.text.strip():
        return Reject(path, line, "empty document")
    size = len(doc.text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return Reject(path, line, f"document of {size:,} bytes is over max_doc_bytes={max_bytes:,}")
    return doc


def read_jsonl(path: str, source: str, text_field: str, max_bytes: int) -> Iterator[Item]:
    line_no = 0
    try:
        for line_no, raw in enumerate(_binary_lines(path), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield Reject(path, line_no, f"invalid UTF-8 at byte {e.start}")
                continue
            except json.JSONDecodeError as e:
                yield Reject(path, line_no, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            text = obj.get(text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                yield Reject(path, line_no, f"no string field {text_field!r}")
                continue
            meta = {k: v for k, v in obj.items() if k not in (text_field, "id")}
            doc_id = str(obj.get("id") or f"{os.path.basename(path)}:{line_no}")
            yield _check(Document(doc_id, text, source, meta), path, line_no, max_bytes)
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt compressed file
        yield Reject(path, line_no + 1, f"unreadable after line {line_no}: {type(e).__name__}: {e}")
    except Exception as e:  # zstandard raises its own error type
        if type(e).__module__.startswith("zstandard"):
            yield Reject(path, line_no + 1, f"unreadable after line {line_no}: {e}")
        else:
            raise


def read_parquet(path: str, source: str, text_field: str, max_bytes: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends for damaged files
        yield Reject(path, None, f"unreadable parquet: {e}")
        return
    if text_field not in table.column_names:
        yield Reject(path, None, f"no column {text_field!r}")
        return
    for row_no, row in enumerate(table.to_pylist(), start=1):
        text = row.pop(text_field)
        if not isinstance(text, str):
            yield Reject(path, row_no, f"no string field {text_field!r}")
            continue
        doc_id = str(row.pop("id", None) or f"{os.path.basename(path)}:{row_no}")
        yield _check(Document(doc_id, text, source, row), path, row_no, max_bytes)


def read_text_files(path: str, source: str, max_bytes: int) -> Iterator[Item]:
    """A .txt file, or every .txt file under a folder; the id is the path relative to the folder."""
    root = Path(path)
    for txt in sorted(root.rglob("*.txt")) if root.is_dir() else [root]:
        try:
            text = txt.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            yield Reject(str(txt), None, f"invalid UTF-8 at byte {e.start}")
            continue
        doc_id = str(txt.relative_to(root)) if root.is_dir() else txt.name
        yield _check(Document(doc_id, text, source), str(txt), None, max_bytes)


def read_warc(path: str, source: str, max_bytes: int) -> Iterator[Item]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    with open(path, "rb") as fh:
        for n, record in enumerate(ArchiveIterator(fh, record_types=WarcRecordType.response), start=1):
            url = record.headers.get("WARC-Target-URI", "").strip("<>")
            ctype = record.http_headers.get("Content-Type", "") if record.http_headers else ""
            if "html" not in ctype.lower():
                yield Reject(path, n, f"not HTML ({ctype or 'no content type'}): {url}")
                continue
            body = record.reader.read()
            html = bytes_to_str(body, detect_encoding(body))
            text = extract_plain_text(html, main_content=True)
            doc = Document(record.headers.get("WARC-Record-ID", f"{path}:{n}"), text, source,
                           {"url": url, "date": record.headers.get("WARC-Date", "")})
            yield _check(doc, path, n, max_bytes)


def read_inputs(files: list[str], source: str, text_field: str = "text",
                max_doc_bytes: int = 10_000_000) -> Iterator[Item]:
    """Documents and rejects of these files, in order."""
    for path in files:
        if os.path.isdir(path) or path.endswith(".txt"):
            yield from read_text_files(path, source, max_doc_bytes)
        elif path.endswith(JSONL_SUFFIXES):
            yield from read_jsonl(path, source, text_field, max_doc_bytes)
        elif path.endswith(".parquet"):
            yield from read_parquet(path, source, text_field, max_doc_bytes)
        elif path.endswith((".warc", ".warc.gz")):
            yield from read_warc(path, source, max_doc_bytes)
        else:
            yield Reject(path, None, "unsupported file type (use jsonl[.gz|.zst], json.gz, parquet, warc[.gz], "
                                     "txt or a folder)")
