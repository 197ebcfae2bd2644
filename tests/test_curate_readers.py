"""Readers on real inputs, and bad input: every problem becomes a reject with file, line and reason."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from lmstack.data.curate.inputs import expand_inputs
from lmstack.data.curate.readers import Document, Reject, read_inputs

from .helpers import SHARED_DATA

WEB = SHARED_DATA / "web"


def split(items):
    items = list(items)
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Reject)]


def test_real_jsonl_gz_and_json_gz():
    docs, rejects = split(read_inputs(expand_inputs([str(WEB / "*.json*.gz")]), "web"))
    assert len(docs) == 50 and not rejects
    cc = [d for d in docs if d.id.startswith("http")]
    assert len(cc) == 20 and cc[0].metadata["metadata"]["language"] == "en"
    c4 = [d for d in docs if "url" in d.metadata]
    assert len(c4) == 30 and c4[0].id.startswith("c4-sample.01.json.gz:")


def test_warc_main_text_extraction():
    docs, rejects = split(read_inputs([str(WEB / "cc-sample-0000.warc.gz")], "warc"))
    assert len(docs) + len(rejects) == 22 and len(docs) >= 20
    team = next(d for d in docs if d.metadata["url"] == "https://www.semanticscholar.org/research/research-team")
    assert team.text.startswith("Meet Our Team") and "<div" not in team.text


def test_zstd_parquet_and_text_folders(tmp_path):
    rows = [{"id": f"r{i}", "text": f"document number {i}", "lang": "en"} for i in range(3)]
    zst = tmp_path / "a.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress("\n".join(map(json.dumps, rows)).encode()))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "one.txt").write_text("plain text file")
    docs, rejects = split(read_inputs([str(zst), str(tmp_path / "b.parquet"), str(tmp_path / "txt")], "s"))
    assert not rejects
    assert [d.id for d in docs] == ["r0", "r1", "r2", "r0", "r1", "r2", "one.txt"]
    assert docs[4].metadata == {"lang": "en"} and docs[-1].text == "plain text file"


def test_bad_inputs_are_rejected_with_file_line_and_reason(tmp_path):
    good = json.dumps({"text": "fine document"})
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b"{not json",
                b'{"text": "caf\xe9 latin-1"}',
                json.dumps({"body": "no text field"}).encode(),
                json.dumps({"text": "   "}).encode(),
                json.dumps({"text": "x" * 2_000}).encode(),
                good.encode(),
            ]
        )
    )
    trunc = tmp_path / "trunc.jsonl.gz"
    full = gzip.compress("\n".join(json.dumps({"text": f"doc {i} " * 50}) for i in range(200)).encode())
    trunc.write_bytes(full[: len(full) // 2])
    docs, rejects = split(read_inputs([str(bad), str(trunc)], "s", max_doc_bytes=1_000))
    reasons = {(r.file.rsplit("/", 1)[-1], r.line): r.reason for r in rejects}
    assert reasons[("bad.jsonl", 2)].startswith("invalid JSON")
    assert reasons[("bad.jsonl", 3)] == "invalid UTF-8 at byte 13"
    assert reasons[("bad.jsonl", 4)] == "no string field 'text'"
    assert reasons[("bad.jsonl", 5)] == "empty document"
    assert "over max_doc_bytes=1,000" in reasons[("bad.jsonl", 6)]
    trunc_rejects = [r for r in rejects if r.file.endswith("trunc.jsonl.gz")]
    assert len(trunc_rejects) == 1 and trunc_rejects[0].reason.startswith("unreadable after line")
    assert sum(d.text == "fine document" for d in docs) == 2
    assert 0 < sum(d.id.startswith("trunc") for d in docs) < 200  # what came before the damage is kept
