"""Bounded memory: with the input 10 times larger, the peak memory of `lmstack prepare`'s process grows by far
less (documents wait on disk between stages, one task at a time is in memory)."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys

import pytest

from .helpers import ROOT, SHARED_DATA, clean_env

RUN = """
import resource, sys
from lmstack.data.curate.pipeline import run_prepare
from tests.helpers import prepare_cfg
off = {f"filters.{f}": "null" for f in ("language", "gopher_quality", "gopher_repetition", "c4", "fineweb")}
cfg = prepare_cfg(**off, tokenize="null", task_bytes=1_000_000)
stats = run_prepare([sys.argv[1]], sys.argv[2], cfg)
assert stats["docs_out"] > 0.9 * stats["docs_in"], stats
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def distinct_documents(path, n: int) -> None:
    """n different documents from real text: each a real document with its words in a shuffled order."""
    with gzip.open(SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz", "rt") as f:
        base = [json.loads(line)["text"].split() for line in f]
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            words = list(base[i % len(base)])
            rng.shuffle(words)
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(words)}) + "\n")


@pytest.mark.slow
def test_peak_memory_grows_far_less_than_the_input(tmp_path):
    peaks = {}
    for n in (2000, 20000):
        src = tmp_path / f"in{n}.jsonl"
        distinct_documents(src, n)
        out = subprocess.run(
            [sys.executable, "-c", RUN, str(src), str(tmp_path / f"out{n}")],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n] = int(out.stdout.split()[-1])
    assert peaks[20000] < 1.5 * peaks[2000], peaks
