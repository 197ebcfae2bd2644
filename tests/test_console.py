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
    run = tmp_path / "run"
    args = [str(ROOT / "train.py"), *SMALL, "train.max_tokens=768", "train.ckpt_every_steps=2"]
    args += [f"run_dir={run}", f"paths.cache_dir={cache_dir}", "trainer.enable_progress_bar=true"]
    lines = console(args, tmp_path)
    check(lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("model:"))  # after the corpus, if prepared
    assert [line.split(":")[0] for line in lines[start : start + 4]] == [
        "model", "budget", "run directory", "val/bpb before training"
    ]  # fmt: skip
    bars = [line for line in lines if "━" in line]  # one bar, counting steps, not Lightning's `Epoch 0/-2`
    assert len(bars) == 1 and bars[0].startswith("train") and "3/3" in bars[0], bars
    assert not [line for line in lines if "Validation" in line or "stalled" in line or line.startswith("[")]
    assert lines[-2].startswith("trained 3 steps, 768 tokens in") and f"{run}/checkpoints" in lines[-2]
    assert lines[-1].startswith("val/bpb before:")
    logged = (run / "train.log").read_text()  # the details the console leaves out are in the run's log
    assert logged.count("training stalled") == 3 and not list((tmp_path / "outputs").glob("runs/*"))
    lines = console(
        ["-m", "lmstack.cli", "prepare", f"inputs=[{SHARED_DATA}/web/c4-sample.01.json.gz]",
         f"output_dir={tmp_path / 'prepared'}", "prepare.tokenize=null"],
        tmp_path,
    )  # fmt: skip
    check(lines)
    assert "documents in" in lines[-1]
    table = lines[lines.index(next(line for line in lines if line.startswith("stage "))) :]
    assert table[0].split() == ["stage", "docs", "in", "docs", "out", "MB", "out"]
    assert [row.split()[0] for row in table[1:3]] == ["read", "language"]  # then the filters, in order
    assert any(row.split()[:2] == ["gopher_quality/short_doc", "1"] for row in table)  # what report.md counts
