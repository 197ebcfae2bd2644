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

from .helpers import ROOT, SHARED_DATA, prepare_cfg, prepare_overrides

HOW_IT_RAN = ("timing.json", "report.md", "report.png")  # wall times, CPU, memory: not what the job produced
BASE = {"tokenize.vocab_size": 512, "tokenize.seq_len": 64, "filters.language": "null", "task_bytes": 150_000}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """The web samples (JSONL, JSON, WARC) and the first 120 Brown documents (1.4 MB: ~10 read tasks)."""
    import gzip

    brown = tmp_path_factory.mktemp("inputs") / "brown-120.jsonl.gz"
    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f, gzip.open(brown, "wt") as g:
        g.writelines(line for line, _ in zip(f, range(120)))
    return [str(SHARED_DATA / "web" / "*.json*.gz"), str(brown)]


@pytest.fixture(scope="module")
def base(quality_model) -> dict:
    """BASE with a quality classifier keeping 70% of the job's documents (a global step of its own), the
    corpus tokenized into two buckets of its score (cut at the job's median)."""
    return {**BASE, "+quality.brown": f"{{model: '{quality_model / 'model.bin'}', keep_fraction: 0.7}}",
            "tokenize.buckets": "{by: brown, quantiles: [0.5]}"}  # fmt: skip


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file the job wrote, by relative path, except the records of how it ran."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not str(p.relative_to(folder)).startswith(".lmstack") and p.name not in HOW_IT_RAN
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base, inputs) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "local-1"
    stats = run_prepare(inputs, str(out), prepare_cfg(**base))
    assert stats["removed"]["quality/brown"] > 0
    assert stats["tasks"] > stats["files"] and stats["docs_out"] > 0
    got = outputs(out)
    assert {"documents.jsonl.gz", "stats.json", "web_q0/train/index.json", "web_q1/val/index.json"} <= set(got) and any(
        k.endswith(".bin") for k in got
    )
    return got


def same_as(reference: dict, out: Path) -> None:
    got = outputs(out)
    assert got.keys() == reference.keys()
    assert [k for k in got if got[k] != reference[k]] == []


@pytest.mark.slow
def test_local_and_ray_with_any_number_of_workers_write_the_same_bytes(tmp_path, reference, base, inputs, capfd):
    for executor, workers in (("local", 2), ("ray", 1), ("ray", 3)):  # one Ray worker, and more than the cores
        out = tmp_path / f"{executor}-{workers}"
        capfd.readouterr()
        run_prepare(inputs, str(out), prepare_cfg(**base, executor=executor, num_workers=workers))
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
def test_a_ray_worker_killed_mid_task_is_retried_and_the_output_is_the_same(tmp_path, reference, base, inputs):
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
    run_prepare(inputs, str(out), prepare_cfg(**base, executor="ray", num_workers=2))
    killer.join()
    assert killed, "no Ray worker was seen running a read task"
    same_as(reference, out)


@pytest.mark.slow
def test_a_killed_job_reruns_only_its_unfinished_tasks(tmp_path, reference, base, inputs):
    out = tmp_path / "killed"
    overrides = prepare_overrides(base)
    cmd = [sys.executable, "-m", "lmstack.cli", "prepare", f"inputs=[{','.join(inputs)}]", f"output_dir={out}"]
    job = subprocess.Popen([*cmd, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((out / ".work" / "read").glob("*/result.json"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    finished = len(list((out / ".work" / "read").glob("*/result.json")))
    assert finished >= 3 and not (out / "stats.json").exists()
    stats = run_prepare(inputs, str(out), prepare_cfg(**base))
    timing = json.loads((out / "timing.json").read_text())
    assert timing["stages"]["read"]["tasks_run"] == stats["tasks"] - finished  # the finished ones were kept
    same_as(reference, out)
    assert not (out / ".work").exists()


WEB = [str(SHARED_DATA / "web" / "*.json*.gz"), str(SHARED_DATA / "web" / "*.warc.gz")]  # 6 files: 6 read tasks


@pytest.fixture(scope="module")
def default_reference(tmp_path_factory) -> dict[str, bytes]:
    """The web samples through the default pipeline on the local executor (what the documented cluster job
    runs: enough read tasks for both nodes)."""
    out = tmp_path_factory.mktemp("default") / "local"
    run_prepare(WEB, str(out), prepare_cfg())
    return outputs(out)


def documented_cluster() -> str:
    """The docs' block (docs/guides/data.md) that starts a 2-node Ray cluster on one machine and runs a job on it."""
    text = (ROOT / "docs" / "guides" / "data.md").read_text()
    start = text.index("```bash\n# lmstack: a 2-node Ray cluster on one machine")
    return text[start + len("```bash\n") : text.index("```", start + 3)]


def in_own_network(lines: str, script: Path, env: dict, flags: str):
    """Run bash `lines` in a network namespace of their own (loopback only), Ray stopped afterwards whatever
    happened; returns the completed process and its output."""
    script.write_text(lines)
    try:
        done = subprocess.run(
            ["unshare", "-n", "bash", "-c", f"ip link set lo up && bash {flags} pipefail {script}"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        subprocess.run(["unshare", "-n", "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
    return done, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("earlier_token", [False, True], ids=["fresh-home", "earlier-token"])
def test_the_documented_ray_cluster_starts_closed_and_runs_the_job(tmp_path, earlier_token, default_reference):
    """The documented commands as they stand, in a fresh HOME (and again with a token an earlier local Ray left in
    ~/.ray/auth_token), inside a network namespace of their own with only loopback: token authentication on,
    both nodes run tasks, and the output is the local executor's."""
    import shutil

    if not shutil.which("ip") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n, ip): the cluster would listen on this machine")
    home, out = tmp_path / "home", tmp_path / "two-nodes"
    home.mkdir()
    if earlier_token:
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text("an-earlier-local-token\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), INPUTS=",".join(WEB), OUT=str(out),
               PATH=f"{Path(sys.executable).parent}:{env['PATH']}", RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    lines = documented_cluster()
    if not earlier_token:  # before the cluster stops: a driver with a wrong token is refused, the right one joins
        probe = "import ray, sys; ray.init(address='127.0.0.1:6379'); print('joined', len(ray.nodes()))"
        probes = f'RAY_AUTH_TOKEN=wrong timeout 60 python3 -c "{probe}" && exit 3\npython3 -c "{probe}"\n'
        assert lines.endswith("ray stop\n")
        lines = lines[: -len("ray stop\n")] + probes + "ray stop\n"
    done, log = in_own_network(lines, tmp_path / "cluster.sh", env, "-euo")
    assert done.returncode == 0, log[-3000:]
    assert "Token authentication is disabled" not in log
    assert "without token authentication" not in log  # the job joined with the cluster's token
    assert (home / ".ray-cluster-token").stat().st_mode & 0o077 == 0  # readable by its owner only
    stages = json.loads((out / "timing.json").read_text())["stages"].values()
    assert max(s.get("nodes") or 0 for s in stages) == 2  # both nodes ran tasks
    same_as(default_reference, out)
    if not earlier_token:  # the token checks do not depend on what HOME held before
        assert "joined 2" in log and "AuthenticationError" in log, log[-3000:]


def test_a_job_joining_a_cluster_without_authentication_warns_first(monkeypatch, caplog):
    """The warning is logged before Ray is asked to join (ray.init to an address retries for minutes when
    nothing answers, so the call is recorded here instead of made)."""
    import ray

    from lmstack.data.curate.executors import RayExecutor

    joined = []
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: joined.append((kw, [r.getMessage() for r in caplog.records])))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with caplog.at_level("WARNING", "lmstack"), RayExecutor(1, "127.0.0.1:6379"):
        pass
    ((kw, before),) = joined
    assert kw["address"] == "127.0.0.1:6379"
    assert "joining a Ray cluster without token authentication" in before[0]
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    caplog.clear()
    with caplog.at_level("WARNING", "lmstack"), RayExecutor(1, "127.0.0.1:6379"):
        pass
    assert not caplog.records
