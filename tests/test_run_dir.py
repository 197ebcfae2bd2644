"""A run directory has one writer: a second run into a busy directory is refused at once naming the holder,
a finished one is refused unless `ckpt_path=` resumes it, and a resume in place never writes `last-v1.ckpt`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmstack.config.schema import ConfigError

from .helpers import ROOT, SMALL, clean_env


@pytest.mark.slow
def test_a_second_run_into_a_busy_run_directory_is_refused_at_once(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = [sys.executable, "train.py", *SMALL, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(
        [*args, "train.max_tokens=200000"], cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            lock = run_dir / ".lmstack.lock"
            if lock.is_file() and f"pid {first.pid}" in lock.read_text():
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        os.kill(first.pid, signal.SIGSTOP)  # it holds the directory, alive, without taking the CPU meanwhile
        started = time.time()
        second = subprocess.run(args, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        line = second.stderr.strip().splitlines()[-1]
        assert (
            line.startswith(f"lmstack train: run_dir: {run_dir} is in use by pid {first.pid} on ") and "since " in line
        )
        assert socket.gethostname() in line and "Traceback" not in second.stderr
        assert time.time() - started < 60  # at once: no corpus work, no training
        assert first.poll() is None  # the first run goes on
        assert not (run_dir / "checkpoints" / "last-v1.ckpt").exists()
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_finished_run_directory_is_refused_unless_resumed(small_cfg, tmp_path):
    from lmstack.run import run

    cfg = small_cfg("train.max_tokens=512")
    run(cfg)
    run_dir = Path(cfg.run_dir)
    last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    again = small_cfg("train.max_tokens=512")
    with pytest.raises(ConfigError, match=f"{run_dir} holds an earlier run .status 'completed'.; resume it with"):
        run(again)
    broken = small_cfg("train.max_tokens=512", "init_from=/nonexistent.ckpt")
    broken.run_dir = str(tmp_path / "broken")
    with pytest.raises(ConfigError, match="init_from"):
        run(broken)
    marker = json.loads((tmp_path / "broken" / ".lmstack.json").read_text())
    assert marker["status"] == "failed" and "init_from" in marker["error"]
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == last  # untouched
    other = small_cfg("train.max_tokens=512")
    other.ckpt_path = str(tmp_path / "elsewhere.ckpt")
    (tmp_path / "elsewhere.ckpt").write_bytes(last)
    with pytest.raises(ConfigError, match="holds an earlier run"):  # a checkpoint of another folder: still refused
        run(other)
    resumed = small_cfg("train.max_tokens=1024")
    resumed.ckpt_path = str(run_dir)
    assert run(resumed)["steps"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt


def test_only_rank_zero_claims_the_run_directory(tmp_path, monkeypatch):
    from lmstack.rundir import hold_run_dir

    monkeypatch.setenv("LOCAL_RANK", "1")
    with hold_run_dir(tmp_path / "run", None) as owned:
        assert owned is None and not (tmp_path / "run").exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    with hold_run_dir(tmp_path / "run", None, init_from=None) as owned:
        assert owned is not None and owned.marker["status"] == "running" and owned.marker["pid"] == os.getpid()
