"""The one way to extend lmstack, used as a user would: a file of theirs, outside the package, that registers a
component (`lmstack.registry.register`), loaded with `imports=[module]`; then the ordinary command runs it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pytest

from lmstack.config import ConfigError
from lmstack.registry import lookup, names

from .helpers import ROOT, SHARED_DATA, clean_env

WEB = sorted(str(p) for p in (SHARED_DATA / "web").glob("*.json*.gz"))[:2]

MY_FILTER = '''
"""A user's filter: documents without a given word go."""
from dataclasses import dataclass

from lmstack.registry import register


@register("filter", "needs_word")
@dataclass
class NeedsWord:
    word: str
    name: str = "needs_word"

    def __call__(self, doc):
        return None if self.word in doc.text.lower().split() else "missing_word"
'''


def lmstack(*args: str, cwd, pythonpath) -> subprocess.CompletedProcess:
    env = clean_env(PYTHONPATH=f"{pythonpath}:{ROOT}")
    return subprocess.run(
        [sys.executable, "-m", "lmstack.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_a_users_filter_from_outside_the_package_runs_in_prepare(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_filters.py").write_text(textwrap.dedent(MY_FILTER))
    common = [f"inputs=[{WEB[0]},{WEB[1]}]", "prepare.tokenize=null", "prepare.dedup={}"]
    base = lmstack("prepare", *common, f"output_dir={tmp_path / 'all'}", cwd=tmp_path, pythonpath=mine)
    assert base.returncode == 0, base.stderr
    out = lmstack(
        "prepare",
        *common,
        f"output_dir={tmp_path / 'out'}",
        "prepare.imports=[my_filters]",
        "+prepare.filters.needs_word={word: you}",
        "prepare.num_workers=2",  # the filter is built in worker processes too
        cwd=tmp_path,
        pythonpath=mine,
    )
    assert out.returncode == 0, out.stderr
    every = [json.loads(line) for line in gzip.open(tmp_path / "all" / "documents.jsonl.gz", "rt")]
    kept = [json.loads(line) for line in gzip.open(tmp_path / "out" / "documents.jsonl.gz", "rt")]
    expected = [d["id"] for d in every if "you" in d["text"].lower().split()]  # after the default filters
    assert 0 < len(expected) < len(every)
    assert [d["id"] for d in kept] == expected
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["removed"]["needs_word/missing_word"] == len(every) - len(expected)


def test_an_unregistered_name_is_refused_with_what_is_registered():
    with pytest.raises(ConfigError, match=r"prepare.filters.nope='nope' is not registered; allowed: .*c4.*gopher"):
        lookup("filter", "nope", "prepare.filters.nope")
    assert {"sdpa", "eager"} <= set(names("attention")) and "adamw" in names("optimizer")
    assert {"cosine", "wsd"} <= set(names("schedule")) and {"arithmetic", "sort"} <= set(names("task"))
    assert {"exact", "minhash", "paragraph", "url"} == set(names("dedup"))
