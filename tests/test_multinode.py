"""Two "nodes" on this machine: `torchrun --nnodes 2 --node-rank {0,1}` with a localhost rendezvous, and the
same two processes as a Slurm job step would start them (SLURM_* variables). One run directory for both (no
`hydra.run.dir` given: each process composes its own config, and the directory's name is shared), and the
same validation result as one node with 2 processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from .helpers import ROOT, SMALL, clean_env

TRAIN = [*SMALL, "train.max_tokens=2048", "strategy=ddp", "trainer.devices=1", "trainer.num_nodes=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_run_dir(root) -> dict:
    named = sorted((root / "runs").iterdir())  # runs/DATE/TIME, or runs/slurm-JOB.STEP
    runs = [p for d in named for p in ([d] if d.name.startswith("slurm-") else sorted(d.iterdir()))]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "result.json").read_text())


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> dict:
    """2 processes on one node (Lightning's launcher): the result the two nodes must match; its corpus cache
    is the torchrun nodes' (the Slurm tasks build their own, both at once)."""
    out = tmp_path_factory.mktemp("one-node")
    overrides = [*TRAIN[:-2], "trainer.devices=2", f"paths.output_root={out}"]
    env = clean_env(LMSTACK_CACHE=str(out / "cache"))
    subprocess.run([sys.executable, "-m", "lmstack.train", *overrides], cwd=ROOT, env=env, check=True, timeout=600)
    return {**only_run_dir(out), "cache": str(out / "cache")}


@pytest.mark.slow
def test_two_torchrun_nodes_share_one_run_dir_and_match_one_node(tmp_path, one_node):
    port, env = free_port(), clean_env(LMSTACK_CACHE=one_node["cache"])
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "lmstack.train", *TRAIN, f"paths.output_root={tmp_path}"],
            cwd=ROOT, env={**env, "TZ": tz}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank, tz in ((0, "UTC"), (1, "Etc/GMT-9"))  # machines whose clocks say different times
    ]  # fmt: skip
    logs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    result = only_run_dir(tmp_path)
    assert result["status"] == "completed" and result["steps"] == one_node["steps"] == 4
    assert result["val/bpb"] == pytest.approx(one_node["val/bpb"], abs=1e-6)


@pytest.mark.slow
def test_a_slurm_job_step_of_two_tasks_shares_one_run_dir_and_matches_one_node(tmp_path, one_node):
    port = free_port()
    slurm = {
        "SLURM_JOB_ID": str(port),  # Lightning derives MASTER_PORT from the job id; this one is free
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_JOB_NAME": "lmstack-test",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    tasks = [
        time.sleep(2 * rank)  # the second task starts later: its clock says another second
        or subprocess.Popen(
            [sys.executable, "-m", "lmstack.train", *TRAIN, f"paths.output_root={tmp_path}"],
            cwd=ROOT,
            env=clean_env(
                LMSTACK_CACHE=str(tmp_path / "cache"),
                **slurm,
                SLURM_PROCID=str(rank),
                SLURM_LOCALID="0",
                SLURM_NODEID=str(rank),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    result = only_run_dir(tmp_path)
    assert result["status"] == "completed" and result["steps"] == one_node["steps"]
    assert result["val/bpb"] == pytest.approx(one_node["val/bpb"], abs=1e-6)
