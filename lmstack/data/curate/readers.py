"""Readers for raw documents. Every problem becomes a `Reject` with file, line (or record) and reason;
nothing is dropped silently and one bad file or line never stops the run: a record that cannot be read,
decoded or extracted is one reject, and a file that fails as a whole (not that format, truncated,
unreadable) is a reject that says what was lost.

Formats: .jsonl / .jsonl.gz / .jsonl.zst / .json.gz (one object per line), .parquet, folders of .txt
files, and WARC (.warc / .warc.gz) HTTP responses whose HTML goes through resiliparse's main-content
extraction; local files or fsspec URLs (`lmstack.data.storage`). Which files: `inputs`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

from lmstack.config.prepare import PrepareSection

from .. import storage


@dataclass
class Document:
    id: str
    text: str
    source: str
    metadata: dict = field(default_factory=dict)
    # values a worker computed from `text` for later steps (size, dedup keys), each stored with the text it
    # was computed from so that a step which rewrites the text invalidates it; never written out
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    origin: tuple = field(default=("", None), repr=False, compare=False)  # (file, line): where a reject points

    def reject(self, reason: str) -> "Reject":
        return Reject(self.origin[0], self.origin[1], reason)

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


def compressed(path: str) -> bool:
    return path.endswith((".zst", ".gz"))


def _binary_lines(path: str, start: int = 0, stop: int | None = None, first_line: int | None = None):
    """(line number, line) of the lines that start at a byte in [start, stop) of the (decompressed) file.
    A plain file with `first_line` known (the number of the line at `start`, which must start a line) is
    read from `start` on; otherwise the stream is read from its beginning and the lines before skipped."""
    if path.endswith(".zst"):
        import zstandard

        fh = zstandard.ZstdDecompressor().stream_reader(storage.open_binary(path))
    elif path.endswith(".gz"):
        fh = gzip.GzipFile(fileobj=storage.open_binary(path))
    else:
        fh = storage.open_binary(path)
    with fh:
        lines = io.BufferedReader(fh) if path.endswith(".zst") else fh
        offset, line_no = 0, 1
        if start and first_line is not None and not compressed(path):
            fh.seek(start)
            offset, line_no = start, first_line
        for raw in lines:
            if stop is not None and offset >= stop:
                return
            if offset >= start:
                yield line_no, raw
            offset += len(raw)
            line_no += 1


def _check(doc: Document, path: str, line: int | None, max_bytes: int) -> Item:
    """A document, or a reject: empty, too large, or with an id or text that is not valid Unicode (JSON
    can carry unpaired surrogates such as \\ud800, which no UTF-8 encoder, tokenizer or filter accepts)."""
    doc.origin = (path, line)
    if not doc.text.strip():
        return Reject(path, line, "empty document")
    try:
        size = len(doc.text.encode("utf-8"))
        doc.id.encode("utf-8")
    except UnicodeEncodeError as e:
        which = "text" if e.object is doc.text else "id"
        return Reject(path, line, f"{which} is not valid Unicode (unpaired surrogate at character {e.start})")
    if size > max_bytes:
        return Reject(path, line, f"document of {size:,} bytes is over max_doc_bytes={max_bytes:,}")
    return doc


def read_jsonl(
    path: str, source: str, text_field: str, max_bytes: int, span: tuple = (0, None, None)
) -> Iterator[Item]:
    """One object per line; `span` = (start, stop, first_line): only the lines starting in that byte range."""
    line_no = 0
    try:
        for line_no, raw in _binary_lines(path, *span):
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
            except (ValueError, RecursionError) as e:  # e.g. nesting too deep for the parser
                yield Reject(path, line_no, f"invalid JSON: {type(e).__name__}: {e}")
                continue
            text = obj.get(text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                yield Reject(path, line_no, f"no string field {text_field!r}")
                continue
            meta = {k: v for k, v in obj.items() if k not in (text_field, "id")}
            doc_id = str(obj.get("id") or f"{os.path.basename(path)}:{line_no}")
            yield _check(Document(doc_id, text, source, meta), path, line_no, max_bytes)
    except Exception as e:  # noqa: BLE001 - truncated or corrupt file (gzip, zlib, zstandard errors alike)
        yield Reject(
            path, line_no + 1, f"unreadable after line {line_no}, the rest of the file is lost: {type(e).__name__}: {e}"
        )


def read_parquet(path: str, source: str, text_field: str, max_bytes: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        with storage.open_binary(path) as fh:
            table = pq.read_table(fh)
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
    if storage.is_url(path):  # one text object
        try:
            text = storage.read_text(path)
        except (UnicodeDecodeError, OSError) as e:
            yield Reject(path, None, f"unreadable: {type(e).__name__}: {e}")
            return
        yield _check(Document(path.rsplit("/", 1)[-1], text, source), path, None, max_bytes)
        return
    root = Path(path)
    for txt in sorted(p for p in root.rglob("*.txt") if not p.is_dir()) if root.is_dir() else [root]:
        if not txt.is_file():
            yield Reject(str(txt), None, "not a regular file (a dangling link, pipe or device): nothing read")
            continue
        try:
            text = txt.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            yield Reject(str(txt), None, f"invalid UTF-8 at byte {e.start}")
            continue
        except OSError as e:
            yield Reject(str(txt), None, f"unreadable: {type(e).__name__}: {e}")
            continue
        doc_id = str(txt.relative_to(root)) if root.is_dir() else txt.name
        yield _check(Document(doc_id, text, source), str(txt), None, max_bytes)


def _gzip_complete(path: str, start: int = 0) -> bool:
    """Whether a (multi-member) gzip file, read from the member at byte `start` on, ends with a complete
    member: a truncated one does not. (Only the tail after the last record read is decompressed again.)"""
    d = zlib.decompressobj(wbits=31)
    with storage.open_binary(path) as f:
        f.seek(start)
        if f.read(2) != b"\x1f\x8b":  # not a member start (a file that is one gzip stream): from the beginning
            start = 0
        f.seek(start)
        try:
            while chunk := f.read(1 << 20):
                while chunk:
                    d.decompress(chunk)
                    chunk = d.unused_data if d.eof else b""
                    if d.eof and chunk:
                        d = zlib.decompressobj(wbits=31)
        except zlib.error:
            if start:  # the two bytes only looked like a member start
                return _gzip_complete(path)
            raise
    return d.eof


def read_warc(path: str, source: str, max_bytes: int) -> Iterator[Item]:
    """HTTP responses with HTML, through resiliparse's main-content extraction. A file that is not a WARC,
    a record cut short and an archive that ends inside a record are rejects."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    n, size = 0, None if path.endswith(".gz") else storage.size(path)  # .gz: checked at the end
    last = 0  # where the last record read starts (in .gz: its gzip member)
    try:
        with storage.open_binary(path) as fh:
            for n, record in enumerate(ArchiveIterator(fh, record_types=WarcRecordType.response), start=1):
                last = record.stream_pos
                url = record.headers.get("WARC-Target-URI", "").strip("<>")
                ctype = record.http_headers.get("Content-Type", "") if record.http_headers else ""
                if "html" not in ctype.lower():
                    yield Reject(path, n, f"not HTML ({ctype or 'no content type'}): {url}")
                    continue
                if size is not None and record.stream_pos + record.content_length > size:
                    yield Reject(
                        path,
                        n,
                        f"truncated record: {record.content_length:,} bytes declared, the file ends first; {url}",
                    )
                    continue
                body = record.reader.read()
                try:
                    html = bytes_to_str(body, detect_encoding(body))
                    text = extract_plain_text(html, main_content=True)
                except Exception as e:  # noqa: BLE001 - one record's extraction failing loses only it
                    yield Reject(path, n, f"HTML extraction failed: {type(e).__name__}: {e}")
                    continue
                doc = Document(
                    record.headers.get("WARC-Record-ID", f"{path}:{n}"),
                    text,
                    source,
                    {"url": url, "date": record.headers.get("WARC-Date", "")},
                )
                yield _check(doc, path, n, max_bytes)
    except OSError as e:  # fastwarc: "Invalid WARC header" for a file that is not a WARC
        what = "not a WARC file" if n == 0 else f"unreadable after record {n}"
        yield Reject(path, n + 1 if n else None, f"{what}, nothing more read from it: {e}")
        return
    if path.endswith(".gz") and not _gzip_complete(path, last):
        yield Reject(
            path,
            n + 1,
            f"truncated archive: it ends inside a gzip member after record {n}; the rest of the file is lost",
        )


def read_inputs(
    files: list[str],
    source: str,
    text_field: str = "text",
    max_doc_bytes: int = PrepareSection.max_doc_bytes,
    span: tuple | None = None,
) -> Iterator[Item]:
    """Documents and rejects of these files, in order; an error no reader foresaw ends only its file, as
    a reject. `span`: a byte range of a JSONL file (see `read_jsonl`), for a task that reads part of one."""
    for path in files:
        if storage.is_url(path):
            if not storage.isfile(path):
                yield Reject(path, None, "no such object: nothing read")
                continue
        elif not os.path.isdir(path) and not os.path.isfile(path):  # a pipe or device would block
            yield Reject(path, None, "not a regular file or folder (a dangling link, pipe or device): nothing read")
            continue
        if os.path.isdir(path) or path.endswith(".txt"):
            reader = read_text_files(path, source, max_doc_bytes)
        elif path.endswith(JSONL_SUFFIXES):
            reader = read_jsonl(path, source, text_field, max_doc_bytes, span or (0, None, None))
        elif path.endswith(".parquet"):
            reader = read_parquet(path, source, text_field, max_doc_bytes)
        elif path.endswith((".warc", ".warc.gz")):
            reader = read_warc(path, source, max_doc_bytes)
        else:
            reader = None
        if reader is not None:
            n = 0
            try:
                for n, item in enumerate(reader, start=1):
                    yield item
            except Exception as e:  # noqa: BLE001
                yield Reject(
                    path,
                    None,
                    f"reading stopped after {n} records, the rest of the file is lost: {type(e).__name__}: {e}",
                )
        else:
            yield Reject(
                path, None, "unsupported file type (use jsonl[.gz|.zst], json.gz, parquet, warc[.gz], txt or a folder)"
            )
