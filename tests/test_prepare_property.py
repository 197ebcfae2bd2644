"""Property: whatever bytes or JSON documents (any Unicode, lone surrogates included) a user points
`lmstack prepare` at, it exits 0 without a traceback and every document is accounted for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmstack.data.curate.pipeline import run_prepare

from .helpers import prepare_cfg

ROOT = Path(__file__).resolve().parents[1]
# every code point, surrogates included (JSON can carry them as \\udXXX escapes)
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=400)
VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
DOC = st.fixed_dictionaries({"text": TEXT | VALUE}, optional={"id": VALUE, "url": VALUE, "extra": VALUE})
LINE = st.one_of(
    DOC.map(json.dumps),
    DOC.map(lambda d: json.dumps(d, ensure_ascii=False)),
    st.binary(max_size=200),
    VALUE.map(json.dumps),
)


def to_bytes(line) -> bytes:
    return line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")


def write_inputs(folder: Path, jsonl: list, blob: bytes, warc: bytes) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.jsonl").write_bytes(b"\n".join(map(to_bytes, jsonl)))
    (folder / "blob.jsonl.gz").write_bytes(blob)  # random bytes under a compressed name
    (folder / "page.warc").write_bytes(warc)
    (folder / "texts").mkdir(exist_ok=True)
    (folder / "texts" / "a.txt").write_bytes(blob)
    return [str(folder / "*.jsonl*"), str(folder / "page.warc"), str(folder / "texts")]


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(jsonl=st.lists(LINE, max_size=12), blob=st.binary(max_size=300), warc=st.binary(max_size=300))
def test_any_input_is_accounted_for(tmp_path_factory, jsonl, blob, warc):
    tmp = tmp_path_factory.mktemp("prop")
    stats = run_prepare(
        write_inputs(tmp / "in", jsonl, blob, warc),
        str(tmp / "out"),
        prepare_cfg(tokenize="null", keep_removed="true", pii="true"),
    )
    assert stats["docs_in"] == stats["docs_out"] + sum(stats["removed"].values()) + stats["rejected"]
    rejects = (tmp / "out" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == stats["rejected"] and all(json.loads(r)["reason"] for r in rejects)


def test_the_cli_exits_0_on_hostile_input(tmp_path):
    lines = [
        json.dumps({"text": "caf\udce9 \ud800"}),
        b"\xff\xfe{",
        json.dumps({"text": "x" * 50, "id": {"a": 1}}),
        "[" * 50_000,
        json.dumps({"text": "A perfectly ordinary sentence about the weather today. " * 20}),
    ]
    inputs = write_inputs(tmp_path / "in", lines, os.urandom(200), b"WARC/1.0\r\nWARC-Type: response\r\n\r\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmstack.cli",
            "prepare",
            f"inputs=[{','.join(inputs)}]",
            f"output_dir={tmp_path / 'out'}",
            "prepare.tokenize=null",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-800:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["docs_in"] == stats["docs_out"] + sum(stats["removed"].values()) + stats["rejected"]
    assert stats["rejected"] >= 4
