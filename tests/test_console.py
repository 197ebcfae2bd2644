"""What a run prints: lmstack's own lines, each once; no vendor tip, no accelerator or seed chatter, no warning
from a dependency (`lmstack.console`)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from .helpers import ROOT, SHARED_DATA, SMALL, clean_env

NOISE = ("Tip:", "litlogger", "GPU available", "TPU available", "Seed set to", "site-packages", "Warning", "warn(")


def console(args: list[str], cwd) -> list[str]:
    done = subprocess.run(  # both streams in the order they were written, as on a terminal
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
        env=clean_env(PYTHONUNBUFFERED="1"), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    return [line for line in done.stdout.splitlines() if line.strip()]


def check(lines: list[str]) -> None:
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated
    noisy = [line for line in lines if any(n in line for n in NOISE)]
    assert not noisy, noisy


@pytest.mark.slow
def test_a_training_run_and_a_prepare_say_each_thing_once(tmp_path, cache_dir):
    lines = console(
        [str(ROOT / "train.py"), *SMALL, f"run_dir={tmp_path / 'run'}", f"paths.cache_dir={cache_dir}"], tmp_path
    )
    check(lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("model:"))  # after the corpus, if prepared
    assert [line.split(":")[0] for line in lines[start : start + 3]] == ["model", "budget", "run directory"]
    assert lines[-1].startswith("val/bpb before:")
    lines = console(
        ["-m", "lmstack.cli", "prepare", f"inputs=[{SHARED_DATA}/web/c4-sample.01.json.gz]",
         f"output_dir={tmp_path / 'prepared'}", "prepare.tokenize=null"],
        tmp_path,
    )  # fmt: skip
    check(lines)
    assert "documents in" in lines[-1]
