"""A full disk ends a command in one line naming the file, the bytes and the free space; temporary files are
gone and what was complete stays readable. Each test writes onto a small tmpfs of its own (skipped, with the
reason, where this machine does not let the tests mount one)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, SHARED_DATA, SMALL, clean_env

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that size, unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        if not shutil.which("mount"):
            pytest.skip("no mount command here to make a small tmpfs")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name or ".staging-" in p.name]


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "sharded"])
def test_checkpoints_on_a_full_disk(small_disk, cache_dir, sharded):
    """Single-file checkpoints, and FSDP2's sharded folders (one process), whose shard writer reports a full
    disk only as a short write."""
    from lmstack.checkpoint import load_checkpoint

    disk = small_disk("30m")  # two checkpoints of the small model (12 MB each) fit, the third does not
    run_dir = disk / "run"
    done = subprocess.run(
        [sys.executable, "train.py", *SMALL, "train.max_tokens=2048", "train.ckpt_every_steps=1",
         f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
         *(["strategy=fsdp", "trainer.devices=1"] if sharded else [])],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith("lmstack train: disk full (no space left on device): could not write ")
    assert str(run_dir / "checkpoints" / "step000003.ckpt") in line
    assert "bytes to write" in line and "bytes free there" in line
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr
    assert "Traceback" in (run_dir / "train.log").read_text()  # the details are in the run's log
    assert not leftovers(run_dir)
    for name in ("step000001.ckpt", "step000002.ckpt"):
        assert load_checkpoint(str(run_dir / "checkpoints" / name))[2]["global_step"] == int(name[4:10])


def test_prepare_on_a_full_disk_keeps_finished_tasks_and_resumes(small_disk, tmp_path):
    disk = small_disk("1m")
    out = disk / "out"
    args = [sys.executable, "-m", "lmstack.cli", "prepare", f"inputs=[{SHARED_DATA}/web/*.json*.gz]",
            "prepare.tokenize.vocab_size=512"]  # fmt: skip
    done = subprocess.run([*args, f"output_dir={out}"], cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith("lmstack prepare: disk full (no space left on device): could not write ")
    assert str(out) in line and "bytes free there" in line and "Traceback" not in done.stderr
    assert not leftovers(out)
    finished = [p.parent for p in out.rglob("result.json")]
    assert finished  # the tasks that completed before the disk filled are kept, whole
    import json

    marker = json.loads((out / ".lmstack.json").read_text())
    assert marker["status"] != "complete"


def test_the_corpus_cache_and_an_export_on_a_full_disk(small_disk, small_ckpt, tmp_path):
    disk = small_disk("256k")
    done = subprocess.run(
        [sys.executable, "train.py", *SMALL, f"paths.cache_dir={disk / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith("lmstack train: disk full") and str(disk / "cache" / "corpora") in line, line
    assert not leftovers(disk)
    done = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "export", f"ckpt={small_ckpt}", "format=hf", f"out={disk / 'hf'}"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith("lmstack export: disk full") and str(disk / "hf") in line, line
    assert "Traceback" not in done.stderr
    assert not leftovers(disk) and not (disk / "hf" / "model.safetensors").exists()  # the staging folder went


def test_an_error_lmstack_raises_on_purpose_ends_in_one_line(tmp_path, cache_dir):
    """A truncated checkpoint given as ckpt_path: lmstack's own message is the last line, the traceback is in
    the run's log, and Hydra's HYDRA_FULL_ERROR hint is not printed."""
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "train.py", *SMALL, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
         f"ckpt_path={bad}"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith(f"lmstack train: {bad}") and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "HYDRA_FULL_ERROR" not in done.stderr
    assert "Traceback" in (run_dir / "train.log").read_text()
