"""Sweeps: conf/sweep composes, jobs run in their own processes, a diverged job is flagged and the sweep goes
on; `lmstack report` on finished, running and cut-off sweeps; the scaling fit on synthetic power laws."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lmstack.config.schema import validate
from lmstack.config.store import compose
from lmstack.sweep import report as report_mod
from lmstack.sweep.fit import fit_power_law, held_out_check

from .helpers import SHARED_DATA, SMALL, clean_env

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"attention": 3, "norm": 4, "lr": 5, "schedule": 3, "data": 2}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_each_sweep_composes_validates_and_names_its_jobs(name):
    cfg = compose("train", [f"sweep={name}", "run_dir=/tmp/x"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert int(np.prod([len(str(v).split(",")) for v in params.values()])) == JOBS[name]
    assert cfg.model.d_model == 128 and cfg.train.max_tokens == 1_000_000  # tiny at a fixed budget
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    plain["paths"]["shared_data"] = str(SHARED_DATA)
    spec = validate(OmegaConf.to_container(OmegaConf.create(plain), resolve=True))
    assert spec.data_mix.sources[0].name == "brown"


def sweep_cmd(out: Path, cache: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *SMALL,
        *overrides,
        f"paths.output_root={out}",
        f"paths.cache_dir={cache}",
        f"paths.shared_data={SHARED_DATA}",
    ]


def sweep_dir_of(out: Path) -> Path:
    (found,) = [p for p in out.glob("sweeps/*/*") if p.is_dir()]
    return found


def sweep(out: Path, *overrides: str, cache: Path | None = None) -> Path:
    cmd = sweep_cmd(out, cache or out / "cache", *overrides)
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900, env=clean_env(), capture_output=True)
    return sweep_dir_of(out)


# 8 steps each; lr=1e4 gives non-finite losses from its second step, the run stops itself after 5 in a row
LR_SWEEP = ("sweep=lr", "optimizer.lr=3e-3,1e4", "train.max_tokens=2048", "train.val_every_steps=4")


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory, cache_dir) -> Path:
    """The two-job LR sweep through Hydra's basic launcher (one job after the other)."""
    return sweep(tmp_path_factory.mktemp("basic"), *LR_SWEEP, cache=cache_dir)


def report(sweep_dir: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "report", f"dir={sweep_dir}"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return (sweep_dir / "report.md").read_text()


def report_rows(sweep_dir: Path, out: Path) -> list[dict]:
    """report.csv but for the wall time and the sweep's own output folder (which two runs of a sweep differ in)."""
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(open(sweep_dir / "report.csv"))]
    for r in rows:
        assert f"paths.output_root={out} " in r["overrides"]
        r["overrides"] = r["overrides"].replace(f"paths.output_root={out} ", "")
    return rows


@pytest.mark.slow
def test_a_sweep_runs_each_job_in_its_own_process_and_flags_the_diverged_one(lr_sweep, tmp_path):
    sweep_dir = tmp_path / lr_sweep.name
    shutil.copytree(lr_sweep, sweep_dir)  # this test cuts its copy short below
    results = [json.loads((sweep_dir / j / "result.json").read_text()) for j in ("0", "1")]
    assert results[0]["status"] == "completed" and results[1]["status"] == "diverged"
    assert len({results[0]["pid"], results[1].get("pid", results[0]["pid"] + 1)}) == 2
    md = report(sweep_dir)
    assert "| rank | job | optimizer.lr | val/bpb | tokens | wall_s | status | diverged |" in md
    assert "| 1 | 0 | 0.003 |" in md and "| 2 | 1 | 10000.0 |" in md and md.count("| diverged | yes |") == 1
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert [r["job"] for r in rows] == ["0", "1"] and rows[0]["tokens"] == "2048"
    assert float(rows[0]["val/bpb"]) == pytest.approx(results[0]["val/bpb"], rel=1e-5)
    assert (sweep_dir / "loss_curves.png").stat().st_size > 10_000

    # the same sweep cut off: no result.json yet -> running (recent events), then interrupted; a job that
    # never started is listed too
    (sweep_dir / "0" / "result.json").unlink()
    (sweep_dir / "2" / ".hydra").mkdir(parents=True)
    jobs = {j.name: j for j in report_mod.find_jobs(sweep_dir)}
    assert jobs["0"].status == "running" and jobs["2"].status == "not started"
    assert jobs["0"].final("val/bpb") == pytest.approx(results[0]["val/bpb"], rel=1e-5)
    report_mod.RUNNING_WINDOW_S = -1
    try:
        jobs, _ = report_mod.write_report(str(sweep_dir))
    finally:
        report_mod.RUNNING_WINDOW_S = 300
    assert {j.name: j.status for j in jobs} == {"0": "interrupted", "1": "diverged", "2": "not started"}
    assert "1 diverged, 0 failed, 2 unfinished" in (sweep_dir / "report.md").read_text()


def _pid_of(job_dir: Path) -> int | None:
    """The training process of a running job, from the lock it holds on its run directory."""
    try:
        return int((job_dir / ".lmstack.lock").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.slow
def test_submitit_local_runs_the_jobs_in_parallel_with_the_same_results_and_report(lr_sweep, cache_dir, tmp_path):
    cmd = sweep_cmd(tmp_path, cache_dir, *LR_SWEEP, "hydra/launcher=submitit_local")
    env = clean_env()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # the sweep still running: job 0's training process held still while `lmstack report` reads the sweep
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            dirs = list(tmp_path.glob("sweeps/*/*/0"))
            if dirs and _pid_of(dirs[0]) and report_mod._started_at(dirs[0]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"job 0 never started training: {proc.stderr.read() if proc.poll() else ''}")
        job0 = dirs[0]
        pid = _pid_of(job0)
        os.kill(pid, signal.SIGSTOP)
        try:
            assert not (job0 / "result.json").exists(), "job 0 ended before the running sweep could be reported"
            md = report(job0.parent)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert "| 0 | 0.003 |" in md and "| running | no |" in md.split("| 0 | 0.003 |")[1].split("\n")[0]
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    sweep_dir = sweep_dir_of(tmp_path)

    # each job a submitit job and a process of its own, both at once
    assert len([d for d in (sweep_dir / ".submitit").iterdir() if any(d.glob("*_result.pkl"))]) == 2
    from lmstack.ownership import read_marker

    spans = [(read_marker(sweep_dir / j)["created"], (sweep_dir / j / "result.json").stat().st_mtime) for j in "01"]
    assert max(a for a, _ in spans) < min(b for _, b in spans), f"the jobs ran one after the other: {spans}"
    results = {j: json.loads((sweep_dir / j / "result.json").read_text()) for j in ("0", "1")}
    basic = {j: json.loads((lr_sweep / j / "result.json").read_text()) for j in ("0", "1")}
    assert results["0"]["pid"] != basic["0"]["pid"]
    for j in ("0", "1"):  # what the jobs computed, exactly as under the basic launcher
        same = ("status", "val/bpb", "val/bpb_before", "steps", "tokens", "nonfinite_steps")
        assert {k: results[j].get(k) for k in same} == {k: basic[j].get(k) for k in same}
    md = report(sweep_dir)
    assert "1 completed, 1 diverged, 0 failed, 0 unfinished" in md
    report(lr_sweep)
    assert report_rows(sweep_dir, tmp_path) == report_rows(lr_sweep, lr_sweep.parents[2])


def test_the_slurm_launcher_config_asks_for_one_task_per_gpu_on_each_node(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml through submitit's own sbatch writer (an `srun` on PATH only lets submitit
    build its Slurm executor here; nothing is submitted)."""
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = compose(
        "train",
        ["sweep=lr", "trainer=gpu", "trainer.num_nodes=2", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8"]
        + ["hydra.launcher.partition=gpu", "run_dir=/tmp/x"],
        return_hydra_config=True,
    )
    launcher = instantiate(cfg.hydra.launcher)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    params = dict(launcher.params)  # as the launcher hands them to submitit
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    init_only = ("submitit_folder", "max_num_timeout")
    named = {(k if k in generic else f"slurm_{k}"): v for k, v in params.items() if k not in init_only}
    executor.update_parameters(**named)
    sbatch = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "0")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--time=240"):
        assert f"#SBATCH {line}" in sbatch, sbatch


@pytest.mark.slow
def test_optuna_searches_lr_and_warmup(tmp_path, cache_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = sweep(tmp_path, "sweep=lr_optuna", "hydra.sweeper.n_trials=2", cache=cache_dir)
    best = (sweep_dir / "optimization_results.yaml").read_text()
    assert "optimizer.lr" in best and "schedule.warmup_tokens" in best
    values = [json.loads((sweep_dir / j / "result.json").read_text())["val/bpb"] for j in ("0", "1")]
    assert f"best_value: {min(values)}" in best


def test_the_fit_recovers_a_synthetic_power_law():
    c = np.logspace(12, 17, 9)  # the reducible part runs from 2.5 down to 0.08
    loss = 1.69 + 1e4 * c**-0.3
    law = fit_power_law(c, loss)
    assert law.E == pytest.approx(1.69, rel=1e-3) and law.alpha == pytest.approx(0.3, rel=1e-3)
    assert law.A == pytest.approx(1e4, rel=1e-2)
    fitted, held = held_out_check(c, loss)
    assert len(held) == 2 and all(abs(p - a) / a < 1e-3 for _, a, p in held)
    noisy = loss * (1 + 0.005 * np.random.default_rng(0).standard_normal(len(c)))
    assert fit_power_law(c, noisy).alpha == pytest.approx(0.3, rel=0.1)
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law(c[:2], loss[:2])


def test_fit_report_over_jobs_of_several_sizes(tmp_path):
    jobs = []
    for i, n in enumerate([1e6, 2e6, 4e6, 8e6, 16e6]):
        d = 20 * n
        job = report_mod.Job(
            str(i),
            tmp_path,
            {"model.d_model": str(i)},
            "completed",
            result={"non_embedding_params": n, "tokens": d, "val/bpb": 0.0},
        )
        job.result["val/bpb"] = float(1.2 + 50.0 * (6 * n * d) ** -0.15)
        jobs.append(job)
    text = report_mod.fit_report(jobs, predict_flops=6 * 64e6 * 20 * 64e6)
    assert "L(C) = 1.2" in text and "C^(-0.15" in text
    predicted = float(text.rsplit(":", 1)[1])
    assert predicted == pytest.approx(1.2 + 50.0 * (6 * 64e6 * 20 * 64e6) ** -0.15, rel=1e-3)
    with pytest.raises(ValueError, match="at least 4 completed jobs"):
        report_mod.fit_report(jobs[:3])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_job_dies_with_its_sweep_process():
    import os
    import signal
    import time

    sweep = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lmstack.sweep.job import start_job; "
            "p = start_job([sys.executable, '-c', 'import time; time.sleep(120)'], {}); print(p.pid, flush=True); "
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    job = int(sweep.stdout.readline())

    def alive(pid):
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    assert alive(job)
    os.kill(sweep.pid, signal.SIGKILL)  # no handler can run: only the kernel can end the job now
    sweep.wait()
    deadline = time.time() + 20
    while alive(job) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(job)
