"""`prepare.executor`: the same pipeline on processes here (`local`) or as Ray tasks (`ray`, a Ray started for
the job or a cluster joined), with any number of workers, writes the same bytes: documents, token blocks,
statistics. A Ray worker killed mid-task is retried; a job killed as a whole redoes only unfinished tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lmstack.data.curate.pipeline import run_prepare

from .helpers import ROOT, SHARED_DATA, prepare_cfg

HOW_IT_RAN = ("timing.json", "report.md", "report.png")  # wall times, CPU, memory: not what the job produced
INPUTS = [str(SHARED_DATA / "web" / "*.json*.gz"), str(SHARED_DATA / "prose" / "brown.jsonl.gz")]
BASE = {"tokenize.vocab_size": 512, "tokenize.seq_len": 64, "filters.language": "null", "task_bytes": 400_000}


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file the job wrote, by relative path, except the records of how it ran."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not str(p.relative_to(folder)).startswith(".lmstack") and p.name not in HOW_IT_RAN
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "local-1"
    stats = run_prepare(INPUTS, str(out), prepare_cfg(**BASE))
    assert stats["tasks"] > stats["files"] and stats["docs_out"] > 0
    got = outputs(out)
    assert {"documents.jsonl.gz", "stats.json", "web/train/index.json"} <= set(got) and any(
        k.endswith(".bin") for k in got
    )
    return got


def same_as(reference: dict, out: Path) -> None:
    got = outputs(out)
    assert got.keys() == reference.keys()
    assert [k for k in got if got[k] != reference[k]] == []


@pytest.mark.slow
def test_local_and_ray_with_any_number_of_workers_write_the_same_bytes(tmp_path, reference, capfd):
    for executor, workers in (("local", 2), ("ray", 1), ("ray", 2), ("ray", 4)):
        out = tmp_path / f"{executor}-{workers}"
        capfd.readouterr()
        run_prepare(INPUTS, str(out), prepare_cfg(**BASE, executor=executor, num_workers=workers))
        if executor == "ray":  # the tasks really went through a Ray of the job's own, shut down after it
            import ray

            assert "Started a local Ray instance" in capfd.readouterr().err and not ray.is_initialized()
        same_as(reference, out)
        timing = json.loads((out / "timing.json").read_text())
        assert timing["executor"] == executor and timing["workers"] == workers


def ray_task_processes(name: str) -> list[int]:
    """Pids of Ray workers now running a task of this function (Ray titles them `ray::NAME`)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_a_ray_worker_killed_mid_task_is_retried_and_the_output_is_the_same(tmp_path, reference):
    killed = []

    def kill_one():
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            for pid in ray_task_processes("read_task"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one)
    killer.start()
    out = tmp_path / "ray-killed"
    run_prepare(INPUTS, str(out), prepare_cfg(**BASE, executor="ray", num_workers=2))
    killer.join()
    assert killed, "no Ray worker was seen running a read task"
    same_as(reference, out)


@pytest.mark.slow
def test_a_killed_job_reruns_only_its_unfinished_tasks(tmp_path, reference):
    out = tmp_path / "killed"
    overrides = [f"prepare.{k}={v}" for k, v in BASE.items()]
    cmd = [sys.executable, "-m", "lmstack.cli", "prepare", f"inputs=[{','.join(INPUTS)}]", f"output_dir={out}"]
    job = subprocess.Popen([*cmd, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((out / ".work" / "read").glob("*/result.json"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    finished = len(list((out / ".work" / "read").glob("*/result.json")))
    assert finished >= 3 and not (out / "stats.json").exists()
    stats = run_prepare(INPUTS, str(out), prepare_cfg(**BASE))
    timing = json.loads((out / "timing.json").read_text())
    assert timing["stages"]["read"]["tasks_run"] == stats["tasks"] - finished  # the finished ones were kept
    same_as(reference, out)
    assert not (out / ".work").exists()


@pytest.mark.slow
def test_a_two_node_ray_cluster_runs_the_job_with_the_same_output(tmp_path, reference):
    """`ray start --head --num-cpus 1` and `ray start --address ... --num-cpus 1` on this machine: two nodes,
    joined with `prepare.ray.address`; both run tasks."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = str(20000 + os.getpid() % 20000)
    start = [ray_bin, "start", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [*start, "--head", "--port", port, "--include-dashboard=false"], env=env, check=True, timeout=120
        )
        subprocess.run([*start, "--address", f"127.0.0.1:{port}"], env=env, check=True, timeout=120)
        out = tmp_path / "two-nodes"
        cfg = prepare_cfg(**BASE, executor="ray", num_workers=2, **{"ray.address": f"127.0.0.1:{port}"})
        run_prepare(INPUTS, str(out), cfg)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, timeout=120, capture_output=True)
    timing = json.loads((out / "timing.json").read_text())
    assert timing["stages"]["read"]["nodes"] == 2
    same_as(reference, out)
